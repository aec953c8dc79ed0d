"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""
from __future__ import annotations


class AdvshieldError(ValueError):
    """A problem with the user's input (path, file, name, argument). Message is one line.

    A ``ValueError`` subclass, so code that already catches ``ValueError`` for bad arguments keeps working."""


class DataError(AdvshieldError):
    """Missing, unreadable or malformed data."""


class ModelError(AdvshieldError):
    """Unknown model spec or a checkpoint that does not match its card."""
