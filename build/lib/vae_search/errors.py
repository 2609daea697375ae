"""The exceptions the CLI turns into a single line on stderr and a non-zero exit code."""


class UsageError(Exception):
    """Bad input from the user: a path, a name, a number. The message is the whole story (exit 2)."""


class RunError(Exception):
    """The run could not go on for a reason outside the input: a full disk, a database that
    stays down, workers that died. Finished trials are saved; the message says what to do (exit 1)."""

