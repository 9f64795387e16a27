"""Bring-up and entry points: config, placement, deployment, client, CLI, job."""
