"""jointspace: train, evaluate and search joint embedding spaces across modalities."""

__version__ = "0.1.0"
