"""Errors that the CLI reports as one clear line and a non-zero exit."""


class PcompError(Exception):
    """Base class: bad input from the user (config, data, checkpoint, file)."""


class ConfigError(PcompError):
    """An unknown preset, an unknown override key, a bad value or an impossible mesh."""


class DataError(PcompError):
    """A missing dataset, file or field, or data that cannot be read."""


class CheckpointError(PcompError):
    """A missing, incomplete or mismatched checkpoint."""


class CompressedFormatError(PcompError):
    """A compressed file that is truncated, corrupted, not ours, or made by another M1."""


class DivergenceError(PcompError):
    """Training produced a non-finite loss or gradient norm (nothing non-finite is checkpointed)."""
