"""The mistakes a user can make, each with the exit code `finetune` ends with.

A UserError's message names the file, key or row, the problem and the fix; the CLI prints it as
one line (`error: ...`) and exits with its code. Any other exception is a bug: it keeps its
traceback and exits with 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and how."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """params.yaml or the command line asks for something invalid: the message names the key."""

    exit_code = 2


class UsageError(UserError, ValueError):
    """The command line asks for something the command cannot do (no texts given, a missing step)."""

    exit_code = 2


class DataError(UserError, ValueError):
    """Input data cannot be read: the message names the file, the row and the problem."""

    exit_code = 3


class ValidationError(DataError):
    """The data as a whole is unfit for training (too few rows of a label, too many rejects)."""


class ModelError(UserError, ValueError):
    """A model name, folder or registry URI that does not exist or cannot be loaded."""

    exit_code = 4


class ServiceError(UserError, RuntimeError):
    """A service the command needs is unavailable: a tracking server, the model registry, a port."""

    exit_code = 5


class TrackingError(ServiceError):
    """The MLflow tracking store or model registry cannot be reached or fails."""


class OutputError(UserError, OSError):
    """An output cannot be written (a read-only disk, a file where a folder should be)."""

    exit_code = 6
