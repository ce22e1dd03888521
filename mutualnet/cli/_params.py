"""Click parameter types shared by the commands."""

from __future__ import annotations

import math
from typing import Any

import click

from ..config import MAX_RESOLUTION


class NumberList(click.ParamType):
    """A comma-separated list of finite numbers, e.g. ``0.25,0.5,1.0``, each in ``[lo, hi]``
    where given; a bad item is a usage error."""

    def __init__(self, kind: type = float, lo: float | None = None,
                 hi: float | None = None) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi
        self.name = "int list" if kind is int else "number list"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[Any]:
        if isinstance(value, list | tuple):
            return list(value)
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if not items:
            self.fail("expected at least one value", param, ctx)
        out = []
        for item in items:
            try:
                out.append(self.kind(item))
            except ValueError:
                what = "an integer" if self.kind is int else "a number"
                self.fail(f"{item!r} is not {what}", param, ctx)
            self._check(item, out[-1], param, ctx)
        return out

    def _check(self, item: str, v: float, param: click.Parameter | None,
               ctx: click.Context | None) -> None:
        if not math.isfinite(v):
            self.fail(f"{item!r} is not a finite number", param, ctx)
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            self.fail(f"{item} is outside {self.lo:g}..{self.hi:g}", param, ctx)


class FiniteFloat(click.ParamType):
    """One finite number (``inf``, ``nan`` and ``1e309`` are usage errors)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


FLOATS = NumberList(float)
INTS = NumberList(int)
RESOLUTIONS = NumberList(int, lo=1, hi=MAX_RESOLUTION)
FINITE = FiniteFloat()
