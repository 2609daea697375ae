"""The one exception the CLI turns into a single line on stderr and exit code 2."""


class UsageError(Exception):
    """Bad input from the user: a path, a name, a number. The message is the whole story."""
