"""Experiment scripts (see experiments/README.md); each is also runnable as a file."""
