"""MedMNIST multi-dataset benchmark suite: suites → data → models → training → metrics → records."""

__version__ = "0.1.0"
