"""mutualnet: MutualNet training over width and resolution, and subnet deployment."""

__version__ = "0.1.0"
