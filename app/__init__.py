"""parity: a FastAPI service run the way production runs it."""

__version__ = "0.1.0"
