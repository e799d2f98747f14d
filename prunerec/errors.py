"""Errors that the CLI turns into a clear message and a non-zero exit (never a traceback)."""


class PrunerecError(Exception):
    """A problem with the user's input or environment, explained in the message."""
