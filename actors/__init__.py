"""Ray actors: thin shells that hold state, call protocols/, and talk to peers."""
