"""Evaluation: one subnet, the (width, resolution) grid, its Pareto front, tables and plots.

``evaluate`` measures one subnet as the model stands (call :func:`calibrate_bn` first);
``evaluate_grid`` calibrates and evaluates every (w, r) pair and returns points sorted by
MACs; ``write_grid`` saves them as CSV, JSON and an accuracy-vs-MACs PNG with the Pareto
front marked (optionally overlaying other runs). The paper's query "most accurate subnet
within X million MACs" is ``mutualnet best`` (the one budget rule, ``export.budget.choose``).
Subnets are named by :func:`subnet_id` (``w0.25-r20``) everywhere on the training side.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .errors import UsageError
from .fileio import atomic_write
from .slimmable import SlimmableNet

if TYPE_CHECKING:
    from .data import ImageData

GRID_CSV = "eval.csv"
GRID_JSON = "eval.json"
GRID_PNG = "eval.png"


def subnet_id(width: float, resolution: int) -> str:
    """The id of subnet (width, resolution): ``w1.00-r32`` (the manifest uses the same)."""
    return f"w{float(width):.2f}-r{int(resolution)}"


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one subnet: top-1/top-5 in percent over ``images``; mean cross-entropy."""

    top1: float
    top5: float
    images: int
    loss: float
    width: float = 1.0
    resolution: int = 0


@dataclass(frozen=True)
class GridPoint:
    """One evaluated (width, resolution) pair with its cost."""

    width: float
    resolution: int
    macs: int
    params: int
    top1: float
    top5: float
    images: int
    loss: float | None = None

    @property
    def mflops(self) -> float:
        return self.macs / 1e6

    @property
    def id(self) -> str:
        return subnet_id(self.width, self.resolution)


@torch.no_grad()
def evaluate(model: SlimmableNet, width: float, resolution: int, data: ImageData, *,
             batch_size: int = 256, device: str | torch.device = "cpu",
             limit: int | None = None) -> EvalResult:
    """Top-1/top-5 (percent) and mean loss of subnet (``width``, ``resolution``) on ``data``.

    Uses the model's current BN running statistics (eval mode); the 32/224 px evaluation
    images are resized to ``resolution`` on ``device`` as in training.
    """
    from .data import resize_to

    model.eval()
    correct1 = correct5 = n = 0
    loss_sum = 0.0
    with model.subnet(width):
        for x, y in data.batches(batch_size, augment=False, shuffle=False, device=device,
                                 limit=limit):
            logits = model(resize_to(x, int(resolution))).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top.eq(y[:, None])
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
            n += len(y)
    if n == 0:
        raise UsageError("evaluation got no images; check the data set and --limit")
    return EvalResult(top1=100.0 * correct1 / n, top5=100.0 * correct5 / n, images=n,
                      loss=loss_sum / n, width=float(width), resolution=int(resolution))


def evaluate_grid(
    model: SlimmableNet,
    widths: Sequence[float],
    resolutions: Sequence[int],
    val: ImageData,
    calib: ImageData | None,
    *,
    calib_images: int = 10000,
    calib_batch_size: int = 256,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[GridPoint]:
    """Calibrate BN (SPEC 4) on ``calib`` (None: skip) and evaluate every (w, r); by MACs."""
    from tqdm import tqdm

    from .calibrate import calibrate_bn
    from .flops import count

    pairs = [(float(w), int(r)) for w in widths for r in resolutions]
    if not pairs:
        raise UsageError("nothing to evaluate: give at least one width and one resolution")
    for w, _ in pairs:
        model.check_width(w)
    lo = model.width_range[0] if hasattr(model, "width_range") else 0.0
    for w, _ in pairs:
        if w < lo - 1e-9:
            raise UsageError(f"width {w} is below the trained range {list(model.width_range)}")
    points = []
    bar = tqdm(pairs, desc="eval", unit="subnet", disable=not progress, leave=False)
    for w, r in bar:
        bar.set_postfix_str(f"w={w:g} r={r}")
        if calib is not None:
            calibrate_bn(model, w, r, calib, num_images=min(calib_images, len(calib)),
                         batch_size=calib_batch_size, device=device, seed=seed)
        res = evaluate(model, w, r, val, batch_size=batch_size, device=device, limit=limit)
        cost = count(model, w, r)
        points.append(GridPoint(w, r, cost.macs, cost.params, res.top1, res.top5, res.images,
                                res.loss))
    return sort_points(points)


def sort_points(points: Iterable[GridPoint]) -> list[GridPoint]:
    return sorted(points, key=lambda p: (p.macs, -p.top1, p.width, p.resolution))


def pareto_front(points: Iterable[GridPoint]) -> list[GridPoint]:
    """Points no other point beats: none has MACs <= and top-1 >= with one strict; by MACs."""
    front: list[GridPoint] = []
    best = float("-inf")
    for p in sort_points(points):
        if p.top1 > best:
            # drop an earlier point with equal MACs but lower accuracy
            while front and front[-1].macs == p.macs:
                front.pop()
            front.append(p)
            best = p.top1
    return front


# -- tables and files -------------------------------------------------------------------------

def format_table(points: Sequence[GridPoint]) -> str:
    """The grid as a text table sorted by MACs; Pareto points marked with '*'."""
    from .flops import human

    front = {(p.width, p.resolution) for p in pareto_front(points)}
    lines = [f"{'width':>6} {'res':>5} {'MACs':>10} {'top-1':>7} {'top-5':>7}  pareto"]
    for p in sort_points(points):
        mark = "*" if (p.width, p.resolution) in front else ""
        lines.append(f"{p.width:>6.3g} {p.resolution:>5} {human(p.macs):>10} "
                     f"{p.top1:>7.2f} {p.top5:>7.2f}  {mark}")
    return "\n".join(lines)


def grid_document(points: Sequence[GridPoint], *, label: str = "run",
                  meta: dict[str, Any] | None = None) -> dict[str, Any]:
    front = {(p.width, p.resolution) for p in pareto_front(points)}
    return {
        "label": label,
        **(meta or {}),
        "points": [{**asdict(p), "id": p.id, "mflops": p.mflops,
                    "pareto": (p.width, p.resolution) in front} for p in sort_points(points)],
    }


def write_grid(points: Sequence[GridPoint], out_dir: str | os.PathLike[str], *,
               label: str = "run", meta: dict[str, Any] | None = None,
               compare: Sequence[tuple[str, Sequence[GridPoint]]] = (),
               plot: bool = True) -> dict[str, Path]:
    """Write ``eval.csv``, ``eval.json`` and ``eval.png`` (atomically) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = grid_document(points, label=label, meta=meta)
    paths = {"csv": out / GRID_CSV, "json": out / GRID_JSON}

    def write_csv(tmp: Path) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["width", "resolution", "macs", "params", "top1", "top5", "images", "pareto"])
        for p in doc["points"]:
            w.writerow([p["width"], p["resolution"], p["macs"], p["params"],
                        f"{p['top1']:.3f}", f"{p['top5']:.3f}", p["images"], int(p["pareto"])])
        tmp.write_text(buf.getvalue())

    atomic_write(paths["csv"], write_csv)
    text = json.dumps(doc, indent=1) + "\n"
    atomic_write(paths["json"], lambda t: None if t.write_text(text) else None)
    if plot:
        paths["png"] = out / GRID_PNG
        atomic_write(paths["png"], lambda t: plot_grid([(label, points), *compare], t))
    return paths


def plot_grid(runs: Sequence[tuple[str, Sequence[GridPoint]]], path: Path) -> None:
    """Accuracy (top-1) vs million MACs, one colour per run, its Pareto front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (label, points) in enumerate(runs):
        color = f"C{i}"
        pts = sort_points(points)
        ax.scatter([p.mflops for p in pts], [p.top1 for p in pts], s=14, color=color,
                   alpha=0.45)
        front = pareto_front(pts)
        ax.plot([p.mflops for p in front], [p.top1 for p in front], "-o", color=color,
                markersize=5, label=f"{label} (Pareto front)")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("million MACs, log scale")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs computation per (width, resolution)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def load_grid(path: str | os.PathLike[str]) -> tuple[str, list[GridPoint]]:
    """Read an ``eval.json`` (or a dir holding one) back into its label and points."""
    p = Path(path)
    if p.is_dir():
        p = p / GRID_JSON
    try:
        doc = json.loads(p.read_text())
        points = [GridPoint(width=float(d["width"]), resolution=int(d["resolution"]),
                            macs=int(d["macs"]), params=int(d["params"]), top1=float(d["top1"]),
                            top5=float(d["top5"]), images=int(d["images"]),
                            loss=None if d.get("loss") is None else float(d["loss"]))
                  for d in doc["points"]]
    except FileNotFoundError:
        raise UsageError(f"{p} not found; give an eval.json written by `mutualnet eval`") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{p} is not an eval.json written by `mutualnet eval` ({e})") from None
    return str(doc.get("label", p.parent.name)), points


# -- checkpoint-level evaluation (what `mutualnet eval` / `best` run) ---------------------------

@dataclass(frozen=True)
class EvalReport:
    label: str
    points: list[GridPoint]
    table: str
    files: dict[str, Path]


def run_eval(
    checkpoint: str | os.PathLike[str],
    *,
    widths: Sequence[float] | None = None,
    resolutions: Sequence[int] | None = None,
    data: str | tuple[str, str | None] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    compare: Sequence[str] = (),
    calib_images: int | None = None,
    limit: int | None = None,
    device: str | None = None,
    progress: bool = True,
    label: str | None = None,
    config: Any = None,
) -> EvalReport:
    """Load a checkpoint, calibrate + evaluate its (w, r) grid, write CSV/JSON/PNG.

    ``data`` evaluates on other data than the checkpoint's config names: a ``--data`` value
    (:func:`mutualnet.data.parse_data_arg`; a folder is read as the checkpoint's data set
    kind) or a (dataset, root) pair;
    ``compare`` lists other checkpoints (evaluated on the same grid and data) or eval.json
    files to overlay. ``config`` (test_only runs) must describe the checkpoint's model.
    """
    from .checkpoint import check_compatible, load_checkpoint, read_metadata
    from .data import load_data, parse_data_arg
    from .device import resolve_device

    ck = load_checkpoint(checkpoint, map_location="cpu")
    if config is not None:
        check_compatible(config, read_metadata(ck.path), ck.path)
    cfg = config if config is not None else ck.config
    if data is not None:
        dataset, root = parse_data_arg(data, cfg.dataset) if isinstance(data, str) else data
        cfg = cfg.replace(dataset=dataset, dataset_dir=root)
    dev = resolve_device(device or cfg.device)
    model = ck.model.to(dev)
    widths = list(widths) if widths else list(cfg.eval_widths())
    resolutions = list(resolutions) if resolutions else list(cfg.resolution_list or ())
    val = load_data(cfg.data_spec("val"), "val")
    calib = load_data(cfg.data_spec("train"), "train")
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    if head.out_features != val.num_classes:
        raise UsageError(f"{ck.path} predicts {head.out_features} classes but the {cfg.dataset} "
                         f"data has {val.num_classes}; evaluate on matching data (--data)")
    n_calib = calib_images if calib_images is not None else cfg.calib_images
    kwargs = dict(calib_images=n_calib, calib_batch_size=cfg.calib_batch_size,
                  batch_size=cfg.eval_batch_size, device=dev, limit=limit,
                  seed=cfg.random_seed, progress=progress)
    points = evaluate_grid(model, widths, resolutions, val, calib, **kwargs)  # type: ignore[arg-type]
    name = label or _run_label(ck.path, ck.config.method)
    overlays: list[tuple[str, Sequence[GridPoint]]] = []
    for other in compare:
        if _is_grid_json(other):
            overlays.append(load_grid(other))
            continue
        ok = load_checkpoint(other, map_location="cpu")
        om = ok.model.to(dev)
        pts = evaluate_grid(om, widths, resolutions, val, calib, **kwargs)  # type: ignore[arg-type]
        overlays.append((_run_label(ok.path, ok.config.method), pts))
    out = Path(out_dir) if out_dir is not None else ck.path.parent / "eval"
    meta = {"checkpoint": str(ck.path), "sha256": ck.sha256, "model": ck.config.model,
            "method": ck.config.method, "dataset": cfg.dataset, "calib_images": n_calib,
            "compare": [lbl for lbl, _ in overlays]}
    files = write_grid(points, out, label=name, meta=meta, compare=overlays)
    return EvalReport(name, points, format_table(points), files)


def _run_label(path: Path, method: str) -> str:
    return f"{path.parent.name} ({method})"


def _is_grid_json(source: str | os.PathLike[str]) -> bool:
    p = Path(source)
    return p.suffix == ".json" or (p.is_dir() and (p / GRID_JSON).is_file()
                                   and not (p / "checkpoint.safetensors").is_file())


def grid_for(source: str | os.PathLike[str], *, device: str | None = None,
             progress: bool = True) -> tuple[str, list[GridPoint]]:
    """Grid points of ``source``: an eval.json, a dir holding one, or a checkpoint (its run's
    eval/eval.json when present, else evaluated now with the defaults)."""
    from .checkpoint import resolve_checkpoint_path

    if _is_grid_json(source):
        return load_grid(source)
    f = resolve_checkpoint_path(source)
    cached = f.parent / "eval" / GRID_JSON
    if cached.is_file():
        label, points = load_grid(cached)
        try:
            doc = json.loads(cached.read_text())
        except (OSError, ValueError):
            doc = {}
        from .checkpoint import sha256_file

        if doc.get("sha256") == sha256_file(f):
            return label, points
    report = run_eval(f, device=device, progress=progress)
    return report.label, report.points
