"""The `sd-softprompt` command: a thin layer over the Python API (parser.py: flags; main.py: handlers)."""

from .main import main

__all__ = ["main"]
