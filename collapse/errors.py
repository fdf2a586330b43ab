"""Errors a user sees. Each message names the input and what was expected.

``check_int(value, name, low, high)`` is the one check that an argument is an integer in range
(every module's counts, sizes, seeds and indices): a ValueError naming it otherwise.
"""
import operator


class CollapseError(Exception):
    """Base of every error this project raises on purpose (the CLI prints these without a traceback)."""


class DataError(CollapseError, ValueError):
    """Input data is not what was expected: a corrupt shard, a wrong image size, a missing field."""


class StorageError(CollapseError, OSError):
    """A storage URL cannot be used: unknown scheme, unreachable endpoint, refused credentials.
    ``transient``: the store may answer if asked again later (throttled past the client's retries,
    unreachable for a while), so a stage that meets it may run again (cluster.stages.run_stage)."""

    def __init__(self, *args, transient: bool = False):
        super().__init__(*args)
        self.transient = transient


class NotFinishedError(DataError):
    """A sample set (or stage output) has no committed manifest: it is absent or was never finished."""


class ConfigError(CollapseError, ValueError):
    """A run config is not valid: the message names the key, what was given and the allowed values."""


class DamagedError(DataError):
    """Committed bytes no longer match their manifest (or are gone): never read as valid.

    The message has the form ``'<part>' of '<set>' is damaged: <why>`` so that :func:`find_damage`
    recovers both URLs even after the error crossed a process boundary as text (Ray, Ray Train).
    """

    def __init__(self, part_url: str, set_url: str, why: str):
        super().__init__(f"{part_url!r} of {set_url!r} is damaged: {why}")
        self.part_url, self.set_url, self.why = part_url, set_url, why

    def __reduce__(self):
        return type(self), (self.part_url, self.set_url, self.why)


def find_damage(exc: BaseException) -> tuple[str, str] | None:
    """``(set_url, part_url)`` of the first DamagedError in ``exc``, its causes or its text; else None."""
    import re
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DamagedError):
            return e.set_url, e.part_url
        m = re.search(r"'([^']+)' of '([^']+)' is damaged", str(e))
        if m:
            return m.group(2), m.group(1)
        e = e.__cause__ or e.__context__ or getattr(e, "cause", None)
    return None


def transient_storage_error(exc: BaseException) -> "StorageError | None":
    """The first StorageError marked transient in ``exc`` or its causes (a Ray task error's too)."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StorageError):
            return e if e.transient else None
        e = e.__cause__ or e.__context__ or getattr(e, "cause", None)
    return None


def check_int(value, name: str, low: int = 0, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high]`` (``high`` None: no upper bound); else a ValueError
    naming ``name``, the allowed range and what was given.

    Python and numpy integers are accepted (anything with ``__index__``); a bool is refused (True is
    not a count), and so is every float, 3.0 included, and a string."""
    want = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {want}, got the bool {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {want}, got {type(value).__name__} {value!r}") from None
    if n < low or (high is not None and n > high):
        raise ValueError(f"{name} must be {want}, got {n}")
    return n
