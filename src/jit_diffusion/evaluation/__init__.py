"""Evaluation: Inception metrics, Frechet distance, the sample store, sweeps, the small classifier, `jit eval`."""
