"""solo: train a language model from scratch on one machine and serve it to your agents."""

__version__ = "0.1.0"
