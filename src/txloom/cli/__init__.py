"""The ``txloom`` console command (see ``txloom.cli.command``)."""

from txloom.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
