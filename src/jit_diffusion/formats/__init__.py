"""Model files: training checkpoints, official checkpoints, diffusers layouts, conversion, and loading any of them."""
