"""``mutualnet train`` and ``mutualnet eval``: thin wrappers over the library (``best`` is in
:mod:`mutualnet.cli.deploy`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ._params import FLOATS, RESOLUTIONS, progress_option, threads_option


@contextmanager
def _config_warnings() -> Iterator[None]:
    """Show ConfigWarnings as one ``warning: ...`` line each on stderr."""
    from ..config import ConfigWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, ConfigWarning):
                    click.echo(f"warning: {w.message}", err=True)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


@click.command("train")
@click.argument("config", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (YAML value); repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: log_dir, else runs/<model>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override num_epochs.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides device).")
@threads_option
@progress_option
def train_cmd(config: str | None, overrides: tuple[str, ...], out_dir: str | None, resume: bool,
              epochs: int | None, device: str | None, threads: int | None,
              progress: bool) -> None:
    """Train with MutualNet per CONFIG (a .yml path or app:apps/NAME.yml; default: the tiny
    demo on the bundled CIFAR-10 subset). With test_only: true and pretrained: PATH,
    evaluate that checkpoint instead."""
    from ..train.loop import configure_training_threads, default_out_dir, run_config, train

    with _config_warnings():
        cfg = run_config(config, overrides, out_dir=out_dir, resume=resume, epochs=epochs,
                         device=device)
    configure_training_threads(cfg, threads)
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg)
    if cfg.test_only:
        _test_only(cfg, out, progress=progress)
        return
    result = train(cfg, out, resume=resume, progress=progress)
    if not result.history:
        click.echo(f"nothing to do: {out} already completed {result.epoch} of "
                   f"{result.config.num_epochs} epochs (checkpoint {result.checkpoint})")
        return
    val = result.history[-1].get("val", {})
    summary = "  ".join(f"{k} top-1 {v['top1']:.2f}%" for k, v in val.items())
    click.echo(f"trained {result.epoch} epochs ({result.step} steps) in {result.wall_s:.1f} s; "
               f"checkpoint {result.checkpoint}" + (f"; {summary}" if summary else ""))


def _test_only(cfg: Any, out: Path, *, progress: bool) -> None:
    """Evaluate ``cfg.pretrained`` (imported into OUT/imported/ first when external)."""
    from ..weights.save import import_pretrained_for_eval

    source, report = import_pretrained_for_eval(cfg, out)
    if report is not None:
        click.echo(f"pretrained: {report.summary()}\nimported weights saved as {source}",
                   err=True)
    _run_eval(source, widths=list(cfg.eval_widths()),
              resolutions=list(cfg.resolution_list or ()), data=None, out_dir=out / "eval",
              compare=(), calib_images=cfg.calib_images, limit=cfg.max_val_images,
              device=cfg.device, progress=progress, config=cfg,
              label=Path(cfg.pretrained).name if report is not None else None)


def _run_eval(checkpoint: str, *, widths: list[float] | None, resolutions: list[int] | None,
              data: str | None, out_dir: Path | None, compare: tuple[str, ...],
              calib_images: int | None, limit: int | None, device: str | None,
              progress: bool, config: Any = None, label: str | None = None) -> None:
    from ..evaluate import run_eval

    report = run_eval(checkpoint, widths=widths, resolutions=resolutions,
                      data=data, out_dir=out_dir, compare=list(compare),
                      calib_images=calib_images, limit=limit, device=device,
                      progress=progress, label=label, config=config)
    click.echo(report.table)
    for kind, path in report.files.items():
        click.echo(f"{kind}: {path}")


@click.command("eval")
@click.argument("checkpoint")
@click.option("--widths", type=FLOATS, default=None,
              help="Comma list of widths [default: width_mult_list or 4 spaced in the range].")
@click.option("--resolutions", type=RESOLUTIONS, default=None,
              help="Comma list of resolutions [default: the config's resolution_list].")
@click.option("--data", default=None, metavar="NAME|NAME:PATH|PATH",
              help="Evaluate on other data: NAME, NAME:PATH, a .npz file or a folder, e.g. "
                   "npz:../shared/data/cifar10_jpeg.npz, cifar100:/data/c100, "
                   "imagefolder:/data/imagenet [default: the checkpoint's].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where eval.csv/json/png go [default: <run dir>/eval].")
@click.option("--compare", multiple=True, metavar="CKPT_OR_EVAL_JSON",
              help="Overlay another run's curve (checkpoint or eval.json); repeatable.")
@click.option("--label", default=None, help="Legend label of this run [default: run dir name].")
@click.option("--calib-images", type=click.IntRange(min=1), default=None,
              help="Images for BN calibration per subnet [default: calib_images, 10000].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N validation images.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@threads_option
@progress_option
def eval_cmd(checkpoint: str, widths: list[float] | None, resolutions: list[int] | None,
             data: str | None, out_dir: str | None, compare: tuple[str, ...], label: str | None,
             calib_images: int | None, limit: int | None, device: str | None,
             threads: int | None, progress: bool) -> None:
    """Calibrate BN and evaluate every (width, resolution) of CHECKPOINT; print the table by
    MACs and write eval.csv, eval.json and eval.png (accuracy vs MACs, Pareto front)."""
    from ..device import configure_threads

    configure_threads(threads)
    _run_eval(checkpoint, widths=widths, resolutions=resolutions, data=data,
              out_dir=Path(out_dir) if out_dir else None, compare=compare,
              calib_images=calib_images, limit=limit, device=device, progress=progress,
              label=label)


COMMANDS: list[Callable[..., Any]] = [train_cmd, eval_cmd]
