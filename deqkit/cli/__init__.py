"""The ``deqkit`` command line: ``train``, ``eval``, ``diagnose``, ``apps`` and ``bench``."""

from deqkit.cli.main import app, main

__all__ = ["app", "main"]
