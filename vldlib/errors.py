"""The errors vldlib raises for bad input: each message names the problem and the fix."""


class VldlibError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class ConfigError(VldlibError, ValueError):
    """An unknown, mistyped or out-of-range configuration value."""


class DataError(VldlibError, ValueError):
    """Missing, empty, inconsistent or unreadable data."""


class WeightsError(VldlibError, ValueError):
    """A weights or checkpoint file that is missing, unreadable or does not fit the model."""


class RunError(VldlibError, RuntimeError):
    """A run that cannot start or go on: a finished run, a different config, a non-finite loss."""


class DivergedError(RunError):
    """A non-finite loss or update: the run's hyper-parameters diverge (a result for a sweep)."""
