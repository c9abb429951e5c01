"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input (unknown name, out-of-range value, missing or mismatched file).

    A message names a function parameter in backticks (`devices`); the CLI prints the message as one line
    with each such name as its flag (--devices) and exits with status 2.
    """


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the run stops and keeps its last good checkpoint. The CLI exits with 1."""
