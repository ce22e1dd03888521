"""Click parameter types shared by the commands."""

from __future__ import annotations

import math
from collections.abc import Callable
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


def progress_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress`` (default on) and the old ``--quiet`` as a hidden alias of
    ``--no-progress``; the command receives one ``progress: bool``."""

    def merge(ctx: click.Context, param: click.Parameter, quiet: bool) -> bool:
        if quiet:
            ctx.params["progress"] = False
        return quiet

    command = click.option("--quiet", is_flag=True, hidden=True, expose_value=False,
                           callback=merge, help="Same as --no-progress.")(command)
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        is_eager=True, help="Progress bars on stderr.")(command)


def threads_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--threads N``: torch CPU threads [default: the cores this process may use]."""
    return click.option(
        "--threads", type=click.IntRange(min=1), default=None,
        help="CPU threads for torch [default: the cores this process may use (its CPU "
             "affinity); train: less its data decode workers].")(command)
