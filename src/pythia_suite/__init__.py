"""pythia-suite: rebuild the Pythia Scaling Suite from one config file."""

__version__ = "0.1.0"
