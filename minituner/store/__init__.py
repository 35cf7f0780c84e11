"""The run store: typed, versioned records and the run directories under precomputed/
and the user cache. Never imports the training loop."""
