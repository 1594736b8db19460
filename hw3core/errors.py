"""One exception type for mistakes a user can fix, the wrapper that turns it into one line, and
the argparse type that does the same for numbers out of range."""
import argparse
import sys


class UserError(Exception):
    """A bad input (missing file, wrong checkpoint, empty folder) described in one line."""


class Interrupted(Exception):
    """Work stopped by signal ``signum`` after saving what it had; the message says what was
    kept and how to go on."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


def run_cli(main, argv=None):
    """Call ``main(argv)``; a UserError becomes ``error: ...`` on stderr and exit status 2, an
    Interrupted its message and the conventional status of its signal (128 + signal number)."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def at_least(minimum, kind=int):
    """argparse ``type=``: a ``kind`` number no smaller than ``minimum``. argparse reports a bad
    one as ``error: argument --epochs: must be at least 1, not 0`` and exits with status 2,
    instead of a traceback from deep in torch when training starts."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        return value
    return parse
