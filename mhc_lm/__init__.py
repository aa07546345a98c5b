"""mhc-lm: a pretraining stack whose residual connection is a swappable part."""

__version__ = "0.1.0"
