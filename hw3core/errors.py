"""One exception type for mistakes a user can fix, and the wrapper that turns it into one line."""
import sys


class UserError(Exception):
    """A bad input (missing file, wrong checkpoint, empty folder) described in one line."""


def run_cli(main):
    """Call ``main()``; a UserError becomes ``error: ...`` on stderr and exit status 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
