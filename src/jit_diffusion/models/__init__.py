"""The networks: configs and the preset registry, layers, the JiT model, the export format, FLOP counts."""
