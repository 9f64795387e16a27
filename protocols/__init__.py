"""verinfer protocol core: pure rules, no Ray, no I/O, time and randomness passed in."""
