"""The package version (one place; the root package and the provenance of every export read it)."""

__version__ = "0.2.0"
