"""The CLI's one error type (its own module, so `python -m cli.main` and `cli.main` share it)."""

from __future__ import annotations


class CliError(Exception):
    """A failure to report as one clear line, without a traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
