"""One exception family for the whole toolchain.

Every error says what went wrong and what to do about it. The CLI maps
:class:`UsageError` (bad input from the user) to exit code 2 and every other
:class:`MutualNetError` to exit code 1, printing one line and no traceback.

The deployment side has the same convention in ``export.errors`` (it may not
import this package: the device has no torch); the CLI treats both alike.
"""

from __future__ import annotations


class MutualNetError(Exception):
    """Base class of every error this project raises on purpose (exit code 1)."""

    exit_code = 1


class UsageError(MutualNetError):
    """The user asked for something impossible: a bad flag, key, path or value (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file or ``--set`` override is invalid."""


class CheckpointError(MutualNetError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class MissingDependencyError(MutualNetError):
    """An optional package is needed for this feature; the message says how to install it."""


class TrainingDivergedError(MutualNetError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class Interrupted(MutualNetError):
    """A signal (SIGTERM) stopped the command; temporary files were removed (exit 128+N)."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(message or f"stopped by {name}; the partial output was removed")
        self.signum = signum
        self.exit_code = 128 + signum


def reason(error: BaseException) -> str:
    """The first line of a library's error, for our own message; never its advice to unpickle
    (torch's "re-run with weights_only=False", numpy's "allow_pickle"): that runs the file's
    code."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    if any(w in text.lower() for w in ("weights_only", "weights only", "allow_pickle", "pickle")):
        return "it holds pickled Python objects, which are never loaded (they could run code)"
    return text
