"""Errors that the CLI turns into a clear message and a non-zero exit (never a traceback)."""
import errno
import functools
import sys


class PrunerecError(Exception):
    """A problem with the user's input or environment, explained in the message."""


def friendly_errors(command):
    """Wrap a click command: PrunerecError, OSError (disk full, permissions, ...) and undecodable
    text -> message + exit 1; Ctrl-C -> resume hint + exit 130."""
    import click

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PrunerecError as err:
            raise click.ClickException(str(err)) from None
        except UnicodeDecodeError as err:
            raise click.ClickException(f"a file is not UTF-8 text ({err.reason} at byte {err.start}); "
                                       "check the input files") from None
        except OSError as err:
            raise click.ClickException(describe_os_error(err)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted: finished work is saved; rerun the same command with --resume to continue",
                       err=True)
            sys.exit(130)

    return wrapper


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system error, naming the file (and what to do about a full disk)."""
    where = " -> ".join(str(name) for name in (err.filename, err.filename2) if name)
    what = err.strerror or str(err)
    text = f"{where}: {what}" if where else what
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        text += ("; free some space (or write elsewhere) and rerun the same command with --resume: "
                 "finished work is kept")
    return text
