"""Measurement scripts: JSON + PNG out, never asserted as tests."""
