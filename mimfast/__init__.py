"""mimfast: layer-wise training of two-layer networks on Gaussian multi-index models."""

__version__ = "0.1.0"
