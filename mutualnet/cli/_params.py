"""Click parameter types shared by the commands."""

from __future__ import annotations

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
