"""The package's version, in a module of its own so that every layer can read it without
importing the package's ``__init__`` (which reaches the notebook API at the top)."""

__version__ = "0.1.0"
