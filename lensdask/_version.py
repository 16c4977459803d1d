"""The version of lensdask, in a module of its own so that any module can read it without importing the package
face (``lensdask/__init__.py``), which imports everything."""

__version__ = "0.1.0"
