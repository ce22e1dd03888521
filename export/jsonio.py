"""Reading JSON that may be hostile: size-capped, depth-limited, finite numbers, unique keys.

``json.loads`` recurses once per nesting level (100,000 ``[`` end in a RecursionError),
accepts ``NaN``, ``Infinity`` and ``1e999`` (which becomes ``inf``), and keeps the last of
two equal keys. :func:`read_json` refuses all of these with one :class:`ManifestError`
(or the error class given) whose message names the file and says what to do. The nesting
depth is measured before parsing, on the text with its strings blanked out, so no parser
ever recurses deeper than ``max_depth``.

Torch-free: this module runs on the device.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError, ManifestError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "json_depth", "parse_json", "read_json"]

#: A manifest of a few hundred subnets with latencies is well under 1 MB.
MAX_BYTES = 16 << 20
#: manifest.json nests 6 levels deep; anything near this limit is not a manifest.
MAX_DEPTH = 64

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))


class _Refused(ValueError):
    """A value the reader refuses (raised inside the json hooks, turned into ``error``)."""


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in ``text``, brackets inside strings ignored."""
    blanked = _STRING.sub('""', text).encode("utf-8", "surrogatepass")
    codes = np.frombuffer(blanked, dtype=np.uint8)
    steps = ((codes == _OPEN[0]) | (codes == _OPEN[1])).astype(np.int32)
    steps -= (codes == _CLOSE[0]) | (codes == _CLOSE[1])
    return int(np.cumsum(steps).max(initial=0))


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number (NaN and Infinity are refused)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{text} overflows a float")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > 30:
        raise _Refused(f"an integer of {len(text)} digits is not a count mutualnet writes")
    return int(text)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(text: str, *, source: str = "<json>", max_depth: int = MAX_DEPTH,
               error: type[ExportError] = ManifestError) -> Any:
    """Parse ``text``; ``error`` for nesting over ``max_depth``, NaN / Infinity / overflowing
    numbers, duplicate keys, or invalid JSON."""
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{source} nests {depth} levels deep (at most {max_depth}); it is not a "
                    "file mutualnet wrote: re-export it")
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_finite,
                          parse_int=_integer, object_pairs_hook=_unique)
    except _Refused as e:
        raise error(f"{source}: {e}; it is not a file mutualnet wrote: re-export it") from None
    except json.JSONDecodeError as e:
        raise error(f"{source} is not valid JSON (line {e.lineno}: {e.msg}); it may be "
                    "truncated: re-export it") from None
    except (ValueError, RecursionError):  # a backstop: the checks above should catch all
        raise error(f"{source} cannot be read as JSON; re-export it") from None


def read_json(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES,
              max_depth: int = MAX_DEPTH, error: type[ExportError] = ManifestError) -> Any:
    """Read and parse the UTF-8 JSON file ``path`` (at most ``max_bytes``) safely."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {p}: {e.strerror or e}; check the path and permissions") \
            from None
    if len(data) > max_bytes:
        raise error(f"{p} is larger than {max_bytes >> 20} MB, far more than a manifest "
                    "holds; point at the manifest.json that `mutualnet export` wrote")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{p} is not UTF-8 text (byte {e.start}); it is not a file mutualnet "
                    "wrote: re-export it") from None
    return parse_json(text, source=str(p), max_depth=max_depth, error=error)
