"""Click parameter types shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


class NumberList(click.ParamType):
    """A comma-separated list of numbers, e.g. ``0.25,0.5,1.0``; a bad item is a usage error."""

    def __init__(self, kind: type = float) -> None:
        self.kind = kind
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
        return out


FLOATS = NumberList(float)
INTS = NumberList(int)


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
