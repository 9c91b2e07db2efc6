"""Datasets: image folders, the uint8 cache, the built-in emoji set, `load_dataset`."""
