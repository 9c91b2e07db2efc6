"""Errors, file IO, device and precision, counter-based rng, images, distributed and FSDP: no model knowledge."""
