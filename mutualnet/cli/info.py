"""``mutualnet models`` and ``mutualnet flops``: what the registry holds and what it costs."""

from __future__ import annotations

import json

import click

from ..errors import UsageError
from ._params import FLOATS, RESOLUTIONS


@click.command("models")
def models_cmd() -> None:
    """List the registered models with their defaults and size at width 1.0."""
    from ..flops import count_by_name, human
    from ..models import get_model_info, list_models

    click.echo(f"{'name':<16} {'width range':<13} {'resolutions':<18} {'classes':>7} {'params':>8}")
    for name in list_models():
        info = get_model_info(name)
        cost = count_by_name(name, 1.0, info.base_resolution)
        wr = f"[{info.width_range[0]}, {info.width_range[1]}]"
        res = ",".join(str(r) for r in info.resolutions)
        click.echo(f"{name:<16} {wr:<13} {res:<18} {info.num_classes:>7} {human(cost.params):>8}")


@click.command("flops")
@click.argument("model")
@click.option("--width", "widths", type=FLOATS, default="1.0", show_default=True,
              help="Width multiplier, or a comma list.")
@click.option("--resolution", "resolutions", type=RESOLUTIONS, default=None,
              help="Input side in pixels, or a comma list [default: the model's largest].")
@click.option("--classes", type=click.IntRange(min=1), default=None,
              help="Number of classes [default: the model's].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def flops_cmd(model: str, widths: list[float], resolutions: list[int] | None,
              classes: int | None, as_json: bool) -> None:
    """Print the MACs and parameters of MODEL at each (width, resolution) pair."""
    import torch

    from ..flops import count, human
    from ..models import create_model, get_model_info

    info = get_model_info(model)
    for w in widths:
        if not w > 0:
            raise UsageError(f"width must be a positive number, got {w}")
    res = resolutions or [info.base_resolution]
    top = max(max(widths), 1.0)
    with torch.device("meta"):
        net = create_model(model, num_classes=classes, width_range=(min(widths), top))
    min_w, min_r = net.min_width(), net.min_resolution()
    for w in widths:
        if w < min_w:
            raise UsageError(f"width {w} is below {model}'s smallest meaningful width "
                             f"{min_w:.4g}; use a width in [{min_w:.4g}, ...]")
    for r in res:
        if r < min_r:
            raise UsageError(f"resolution {r} is below {model}'s minimum of {min_r} px")
    if not as_json:
        click.echo(f"{'model':<16} {'width':>6} {'res':>5} {'MACs':>10} {'params':>9}")
    for w in widths:
        for r in res:
            cost = count(net, w, r)
            if as_json:
                click.echo(json.dumps({"model": model, "width": w, "resolution": r,
                                       "macs": cost.macs, "params": cost.params}))
            else:
                click.echo(f"{model:<16} {w:>6g} {r:>5} {human(cost.macs):>10} "
                           f"{human(cost.params):>9}")


COMMANDS = [models_cmd, flops_cmd]
