"""Errors a user can cause; the CLI prints them on one line and exits with code 2."""


class MetaplError(Exception):
    """Base class: the message names the bad value and the fix."""


class ConfigError(MetaplError, ValueError):
    """A preset, key, type or value in the configuration (or a settings dataclass) is wrong."""


class DataError(MetaplError):
    """A dataset is missing, corrupt, or too small for the requested split."""


class CheckpointError(MetaplError):
    """A checkpoint or run directory cannot be read or does not fit the model."""


class TrainingError(MetaplError):
    """Training cannot go on (a loss became NaN or infinite)."""


class ExportError(MetaplError):
    """An export could not be written, or the written file does not reproduce the model's outputs."""


class Interrupted(MetaplError):
    """SIGINT or SIGTERM stopped training after a checkpoint was written; the same command resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
