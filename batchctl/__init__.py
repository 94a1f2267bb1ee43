"""batchctl: run a plan of test directories across a fleet of machines."""

__version__ = "0.1.0"
