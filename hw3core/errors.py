"""The two exceptions every entry point turns into one line (hw3core.cli.run_cli): a mistake the
user can fix, and work stopped by a signal after saving what it had."""


class UserError(Exception):
    """A bad input (missing file, wrong checkpoint, empty folder) described in one line."""


class Interrupted(Exception):
    """Work stopped by signal ``signum`` after saving what it had; the message says what was
    kept and how to go on."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum
