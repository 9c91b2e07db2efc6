"""Training: the run config and flags, data order and draws, optimizer, state, logging, health, the trainer."""
