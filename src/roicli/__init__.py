"""roicli: RoI Align, RoI Pool and exact RoI pooling, with the quantization error made visible."""

__version__ = "0.1.0"
