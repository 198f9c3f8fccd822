"""The installed package's version (the source tree's when it is not installed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dmmd")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.1.0"
