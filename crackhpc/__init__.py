"""crackhpc: train and compare concrete-crack classifiers as batch jobs on Slurm clusters."""

__version__ = "0.1.0"
