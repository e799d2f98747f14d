"""Errors that the CLI turns into a clear message and a non-zero exit (never a traceback)."""
import functools
import sys


class PrunerecError(Exception):
    """A problem with the user's input or environment, explained in the message."""


def friendly_errors(command):
    """Wrap a click command: PrunerecError -> message + exit 1; Ctrl-C -> resume hint + exit 130."""
    import click

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PrunerecError as err:
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted: finished work is saved; rerun the same command with --resume to continue",
                       err=True)
            sys.exit(130)

    return wrapper
