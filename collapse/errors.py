"""Errors a user sees. Each message names the input and what was expected."""


class CollapseError(Exception):
    """Base of every error this project raises on purpose (the CLI prints these without a traceback)."""


class DataError(CollapseError, ValueError):
    """Input data is not what was expected: a corrupt shard, a wrong image size, a missing field."""


class StorageError(CollapseError, OSError):
    """A storage URL cannot be used: unknown scheme, unreachable endpoint, refused credentials."""


class NotFinishedError(DataError):
    """A sample set (or stage output) has no committed manifest: it is absent or was never finished."""


class ConfigError(CollapseError, ValueError):
    """A run config is not valid: the message names the key, what was given and the allowed values."""
