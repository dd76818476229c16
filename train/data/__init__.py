"""Training data: procedural scenes, Hypersim, SA-1B shards and pseudo-labels, transforms.

Kept free of torch at import time: ``export.quantize.calibration`` reads SA-1B through ``sa1b``.
"""
