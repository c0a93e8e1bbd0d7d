"""The click command line (the only package that imports click); ``main`` is the console entry point."""

from pipeline.cli.commands import cli, main

__all__ = ["cli", "main"]
