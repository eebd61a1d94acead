"""The errors a user can fix: a bad setting, a bad data file, a model that cannot be loaded, a run that does
not fit, a run directory held by another process. The CLI reports these as one message and exits with
USER_ERROR_EXIT_CODE, without a traceback (HYDRA_FULL_ERROR=1 or ADAKD_DEBUG=1 show it); anything else is a
bug and keeps its traceback."""
from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """Base of the errors above: the message says what is wrong and what is valid."""


class ConfigError(UserError, ValueError):
    """An invalid setting (a key, a value, a combination)."""


class DataError(UserError, ValueError):
    """A benchmark or training file is missing, unreadable or malformed (the message names file and line)."""


class ModelLoadError(UserError, ValueError):
    """A model or tokenizer cannot be found or loaded, or does not match its checksum."""


class RunLocked(UserError, RuntimeError):
    """Another process holds the run directory."""


class DiskFull(UserError, OSError):
    """A write ran out of space: the message names the directory, the free and the needed space."""
