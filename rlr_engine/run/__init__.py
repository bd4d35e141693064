"""A run: the Trainer (model, optimizer, data), the engine loop and its command handlers, the
recorder of the run directory, checkpoints, the control server, the engine process (``host``),
data parallelism and comparisons of several runs."""
