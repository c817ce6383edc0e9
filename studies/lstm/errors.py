"""Errors of the LSTM package that callers tell apart from a trial's own failures."""


class KernelBuildError(RuntimeError):
    """The compiled CPU kernel could not be built or loaded (a machine problem, not the trial's)."""
