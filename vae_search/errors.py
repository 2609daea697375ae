"""The exceptions the CLI turns into a single line on stderr and a non-zero exit code."""

# The last line of a training command that Ctrl-C or SIGTERM stopped (exit 130). A `--jobs`
# parent says it once for all its workers and leaves theirs out (workers.py).
INTERRUPTED = ("vae-search: interrupted; finished trials are saved and running ones are marked FAIL (interrupted). "
               "Run the same command again to resume.")


class UsageError(Exception):
    """Bad input from the user: a path, a name, a number. The message is the whole story (exit 2)."""


def system_reason(e: OSError) -> str:
    """An OSError as the system words it, with the file it names: "No space left on device (x.csv)"."""
    return f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")


class RunError(Exception):
    """The run could not go on for a reason outside the input: a full disk, a database that
    stays down, workers that died. Finished trials are saved; the message says what to do (exit 1)."""

