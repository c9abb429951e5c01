"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input (unknown name, out-of-range value, missing or mismatched file).

    The CLI prints its message as one line and exits with status 2.
    """


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the run stops and keeps its last good checkpoint. The CLI exits with 1."""
