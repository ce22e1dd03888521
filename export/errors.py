"""Errors of the deployment side (torch-free, importable on the device).

Same convention as ``mutualnet.errors``: ``exit_code`` 2 for bad input from
the user, 1 for failures; every message says what to do.
"""

from __future__ import annotations


class ExportError(Exception):
    """Base class of deployment-side errors (exit code 1)."""

    exit_code = 1


class ExportUsageError(ExportError):
    """Bad input to an export/deploy command (exit code 2)."""

    exit_code = 2


class ProfileError(ExportUsageError):
    """A deploy profile file is invalid; the message names the file and key."""


class ManifestError(ExportError):
    """A manifest is invalid, tampered with, escapes its directory, or is stale."""


class ParityError(ExportError):
    """An exported artifact does not compute what the supernet computes."""


class BackendUnavailableError(ExportError):
    """An optional runtime package (tensorrt, onnxruntime) is missing; says how to install it."""


class LatencyTableError(ExportUsageError):
    """A latency table (``export --auto --latency-table``) is invalid or does not match the
    checkpoint; the message names the file, the row and what to do."""


class BudgetError(ExportError):
    """No subnet fits a budget and the caller asked to refuse rather than fall back."""


def reason(error: BaseException) -> str:
    """The first line of a library's error, for our own message; never numpy's advice to
    load with allow_pickle (that runs the file's code). Twin of ``mutualnet.errors.reason``
    (the device side may not import mutualnet)."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    if any(w in text.lower() for w in ("weights_only", "weights only", "allow_pickle", "pickle")):
        return "it holds pickled Python objects, which are never loaded (they could run code)"
    return text
