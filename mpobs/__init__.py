"""mpobs: an observable multiprocess log-pipeline runner."""

__version__ = "0.1.0"
