"""Reproduce MutualNet's two claims on CIFAR-10 at small scale (issue 7).

Claim (a): over the whole FLOPs range MutualNet beats US-Net, which beats independently
trained networks. Claim (b): MutualNet boosts the full-width network itself.

Every run uses the same data, epochs, batch size, schedule and augmentation:

- ``mutual``       MutualNet on the backbone, widths [0.25, 1.0], resolutions {32, 28, 24, 20}
- ``us_net``       US-Net (sandwich widths, base resolution only), same range
- ``independent``  three plain networks of widths 1.0, 0.5 and 0.25 (each its own model)
- ``wide_plain``   a wide WRN trained plainly (claim b)
- ``wide_mutual``  the same WRN trained with MutualNet at widths [0.9, 1.0] (claim b)

Then every run is BN-calibrated and evaluated per (w, r) on one grid, the MutualNet run's
Pareto-front subnets are exported with parity checks (``export.pipeline``), and the script
writes into ``--out``: ``results.csv``/``results.json``, ``accuracy_vs_macs.png`` (log-scale
MACs, Pareto fronts), ``train_loss.png`` (from each run's ``metrics.jsonl``), ``results.md``
(key points, the claims' verdicts, the parity table) and ``gpu_section.md``.
``--docs`` copies the results into ``docs/reproduce/``; ``--docs`` or ``--benchmarks``
writes the "GPU (H100)" section of BENCHMARKS.md (rows of runs not trained on a GPU say
"not measured"). A ``--smoke`` run publishes nothing.

    python benchmarks/reproduce_cifar.py --smoke                       # CPU, ~1-2 minutes
    python benchmarks/reproduce_cifar.py --seeds 0,1 --docs            # the real sweep (GPU)
    python benchmarks/reproduce_cifar.py --skip-existing --docs        # resume after a crash
    python benchmarks/reproduce_cifar.py --report-only --docs          # re-plot finished runs
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import shlex
import shutil
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from export.errors import ExportError  # noqa: E402
from mutualnet.errors import MutualNetError, UsageError  # noqa: E402
from mutualnet.evaluate import GridPoint, pareto_front, sort_points  # noqa: E402
from mutualnet.fileio import atomic_write  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10_jpeg.npz"
DEFAULT_OUT = ROOT / "runs" / "reproduce_cifar"
DOCS_DIR = ROOT / "docs" / "reproduce"
BENCH_KEY = "reproduce_cifar_gpu"
BENCH_TITLE = "GPU (H100): CIFAR-10 reproduction training"

RESOLUTIONS = (32, 28, 24, 20)
CLAIM_A_RANGE = (0.25, 1.0)
INDEPENDENT_WIDTHS = (1.0, 0.5, 0.25)
WIDE_RANGE = (0.9, 1.0)
METHODS = ("mutual", "us_net", "independent", "wide_plain", "wide_mutual")
METHOD_ALIASES = {"all": METHODS, "claim_a": METHODS[:3], "claim_b": METHODS[3:],
                  "wide": METHODS[3:]}
#: Plot/table series, in legend order, with a fixed colour each.
GROUPS = ("MutualNet", "US-Net", "Independent", "Wide plain", "Wide MutualNet")
GROUP_COLORS = dict(zip(GROUPS, ("C0", "C1", "C2", "C3", "C4"), strict=True))
GROUP_MARKERS = dict(zip(GROUPS, ("o", "s", "^", "D", "o"), strict=True))
CLAIM_A_GROUPS = GROUPS[:3]
CLAIM_B_GROUPS = GROUPS[3:]
#: bf16 dense tensor-core peaks (TFLOP/s): half the datasheet figures "with sparsity".
BF16_DENSE_PEAKS = (("H100 PCIe", 756.5), ("H100 NVL", 835.5), ("H100", 989.5),
                    ("H200", 989.5), ("A100", 312.0))

RUNS_DIR = "runs"
GRID_FILE = "grid.json"
TRAIN_FILE = "train.json"
STEPS_FILE = "steps.jsonl"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "export"


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ModelRef:
    """A registered model and its keyword arguments, written ``name[:key=value,...]``."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        import yaml

        name, _, rest = text.partition(":")
        kwargs = []
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"bad model spec {text!r}: write NAME or NAME:key=value,... "
                                 "e.g. wrn:depth=16,widen_factor=4")
            kwargs.append((key.strip(), yaml.safe_load(raw)))
        from mutualnet.models import get_model_info

        get_model_info(name.strip())  # unknown name: UsageError listing the known ones
        return cls(name.strip(), tuple(kwargs))

    @property
    def kw(self) -> dict[str, Any]:
        return dict(self.kwargs)

    @property
    def label(self) -> str:
        kw = self.kw
        if self.name == "wrn":
            return f"WRN-{kw.get('depth', 28)}-{kw.get('widen_factor', 10)}"
        if self.name == "wrn28_10":
            return "WRN-28-10"
        extra = ",".join(f"{k}={v}" for k, v in self.kwargs)
        return self.name + (f"({extra})" if extra else "")

    def __str__(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.kwargs)
        return self.name + (f":{extra}" if extra else "")


@dataclass(frozen=True)
class Settings:
    """Everything shared by the runs of one sweep (what makes the comparison fair)."""

    data: Path | None  # the npz; None: the bundled subset
    backbone: ModelRef
    wide: ModelRef
    epochs: int
    batch_size: int
    lr: float  # for batch 128; scaled linearly with the batch size (SPEC 3)
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    grid_widths: tuple[float, ...]
    train_images: int | None
    val_images: int | None
    calib_images: int
    device: str
    export: bool
    export_max: int
    export_images: int
    eval_each_epoch: bool
    smoke: bool
    progress: bool = True

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(data=str(self.data) if self.data else "cifar10_bundled",
                 backbone=str(self.backbone), wide=str(self.wide))
        return d


@dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep."""

    name: str  # directory name: mutual, us_net, independent-w0.50, wide_plain, wide_mutual
    method: str  # the --methods entry it belongs to
    group: str  # plot/table series
    seed: int
    model: ModelRef
    overrides: Mapping[str, Any]  # TrainConfig keys beyond the shared ones
    eval_widths: tuple[float, ...]

    def dir(self, out: Path) -> Path:
        return out / RUNS_DIR / self.name / f"seed{self.seed}"


def plan_runs(s: Settings) -> list[RunSpec]:
    """The runs of a sweep, seed-major so a partial sweep already holds one full seed."""
    a_range = list(CLAIM_A_RANGE)
    wide_grid = tuple(sorted({WIDE_RANGE[0], round(sum(WIDE_RANGE) / 2, 4), WIDE_RANGE[1]}))
    runs = []
    for seed in s.seeds:
        for m in s.methods:
            if m == "mutual":
                runs.append(RunSpec("mutual", m, "MutualNet", seed, s.backbone,
                                    {"method": "mutual", "width_mult_range": a_range},
                                    s.grid_widths))
            elif m == "us_net":
                runs.append(RunSpec("us_net", m, "US-Net", seed, s.backbone,
                                    {"method": "us_net", "width_mult_range": a_range},
                                    s.grid_widths))
            elif m == "independent":
                for w in INDEPENDENT_WIDTHS:
                    runs.append(RunSpec(f"independent-w{w:.2f}", m, "Independent", seed,
                                        s.backbone, {"method": "independent",
                                                     "width_mult_range": [w, w]}, (w,)))
            elif m == "wide_plain":
                runs.append(RunSpec("wide_plain", m, "Wide plain", seed, s.wide,
                                    {"method": "independent", "width_mult_range": [1.0, 1.0]},
                                    (1.0,)))
            elif m == "wide_mutual":
                runs.append(RunSpec("wide_mutual", m, "Wide MutualNet", seed, s.wide,
                                    {"method": "mutual", "width_mult_range": list(WIDE_RANGE)},
                                    wide_grid))
    return runs


def run_config(spec: RunSpec, s: Settings, run_dir: Path) -> Any:
    """The TrainConfig of ``spec``: shared settings + the method's own keys."""
    from mutualnet.config import config_from_dict

    d: dict[str, Any] = {
        "model": spec.model.name, "model_kwargs": spec.model.kw,
        "dataset": "npz" if s.data else "cifar10_bundled",
        "dataset_dir": str(s.data) if s.data else None,
        "resolution_list": list(RESOLUTIONS), "image_size": max(RESOLUTIONS),
        "num_epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr, "lr_batch_size": 128,
        "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "weight_decay_scope": "all",
        "random_seed": spec.seed, "device": s.device, "log_dir": str(run_dir),
        "max_train_images": s.train_images, "max_val_images": s.val_images,
        "calib_images": s.calib_images, "eval_each_epoch": s.eval_each_epoch,
        "width_mult_list": list(spec.eval_widths) if len(spec.eval_widths) >= 3 else None,
        **spec.overrides,
    }
    return config_from_dict(d, source=f"run {spec.name}")


# ----------------------------------------------------------------------------- files
def write_json(path: Path, doc: Any) -> None:
    atomic_write(path, lambda t: t.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return out


# ----------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class RunResult:
    """A finished run: its evaluated grid, training measurements and loss history."""

    spec: RunSpec
    dir: Path
    points: tuple[GridPoint, ...]
    train: Mapping[str, Any]
    metrics: tuple[dict[str, Any], ...] = ()
    steps: tuple[dict[str, Any], ...] = ()


def points_from(doc: Mapping[str, Any]) -> tuple[GridPoint, ...]:
    fields = {f.name for f in dataclasses.fields(GridPoint)}
    return tuple(GridPoint(**{k: v for k, v in p.items() if k in fields}) for p in doc["points"])


def load_result(spec: RunSpec, out: Path) -> RunResult | None:
    """The finished run in ``out`` (None if its grid was never written)."""
    d = spec.dir(out)
    f = d / GRID_FILE
    if not f.is_file():
        return None
    doc = json.loads(f.read_text())
    train = json.loads((d / TRAIN_FILE).read_text()) if (d / TRAIN_FILE).is_file() else {}
    steps = _last_per_step(read_jsonl(d / STEPS_FILE))
    return RunResult(spec, d, points_from(doc), train, tuple(read_jsonl(d / METRICS_FILE)),
                     tuple(steps))


def _last_per_step(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A resumed run re-runs steps after its last checkpoint: keep the last record of each."""
    by_step = {int(r["step"]): r for r in rows if "step" in r}
    return [by_step[k] for k in sorted(by_step)]


def expected_train_macs(config: Any, model: Any, samples: int = 256) -> float:
    """Mean forward MACs per training image of one step (every subnet it runs), from the
    trainer's own subnet draws for the first ``samples`` steps."""
    from mutualnet.flops import count
    from mutualnet.train import sample_subnets

    total = 0.0
    for step in range(samples):
        subnets = sample_subnets(
            config.method, step=step, seed=config.random_seed,
            width_range=(config.min_width, config.max_width),
            resolutions=config.resolution_list, base_resolution=config.base_resolution,
            num_random=config.num_sampled_widths, fixed_width=config.independent_width)
        total += sum(count(model, sn.width, sn.resolution).macs for sn in subnets)
    return total / samples


def train_run(spec: RunSpec, s: Settings, config: Any, d: Path) -> dict[str, Any]:
    """Train (or resume) one run into ``d``; returns and writes its training measurements."""
    import torch

    from mutualnet.checkpoint import CHECKPOINT_FILE, read_metadata
    from mutualnet.train import resolve_device, train

    done = json.loads((d / TRAIN_FILE).read_text()) if (d / TRAIN_FILE).is_file() else None
    if done is not None and done.get("epochs") == s.epochs:
        return dict(done)
    resume = (d / CHECKPOINT_FILE).is_file()
    finished = resume and int(read_metadata(d).get("epoch", 0)) >= s.epochs
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    d.mkdir(parents=True, exist_ok=True)
    steps_log = open(d / STEPS_FILE, "a")  # noqa: SIM115 - closed in finally
    pending: list[tuple[int, Any, Any]] = []

    def flush() -> None:
        if not pending:
            return
        ce = torch.stack([p[1] for p in pending]).float().tolist()
        tot = torch.stack([p[2] for p in pending]).float().tolist()
        for (step, _, _), c, t in zip(pending, ce, tot, strict=True):
            steps_log.write(json.dumps({"step": step, "loss": c, "loss_total": t}) + "\n")
        steps_log.flush()
        pending.clear()

    def on_step(step: int, lr: float, out: Any) -> None:
        pending.append((step, out.losses[0], out.total))
        if len(pending) >= 50:
            flush()

    try:
        if not finished:  # else: trained, but the crash came before train.json was written
            train(config, d, resume=resume, progress=s.progress, on_step=on_step)
    finally:
        flush()
        steps_log.close()
    from mutualnet.checkpoint import load_checkpoint

    ckpt = load_checkpoint(d)
    model = ckpt.model
    metrics = read_jsonl(d / METRICS_FILE)
    ips = [float(m["images_per_s"]) for m in metrics if "images_per_s" in m]
    steady = ips[1:] if len(ips) > 1 else ips  # epoch 1 holds the warm-up
    info = {
        "run": spec.name, "seed": spec.seed, "epochs": ckpt.epoch, "steps": ckpt.step,
        "steps_per_epoch": ckpt.step // max(ckpt.epoch, 1), "resumed": resume,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "cuda": cuda, "smoke": s.smoke, "batch_size": s.batch_size,
        "images_per_s": statistics.median(steady) if steady else None,
        "peak_memory_bytes": (int(torch.cuda.max_memory_allocated(device))
                              if cuda and not finished else None),
        "train_macs_per_image": expected_train_macs(ckpt.config, model),
        "forward_macs_full": _full_macs(model, config),
        "amp_bf16": config.amp if config.amp is not None else cuda,
    }
    write_json(d / TRAIN_FILE, info)
    return info


def _full_macs(model: Any, config: Any) -> int:
    from mutualnet.flops import count

    return int(count(model, config.max_width, config.base_resolution).macs)


def evaluate_run(spec: RunSpec, s: Settings, config: Any, d: Path) -> tuple[GridPoint, ...]:
    """BN-calibrate and evaluate every (w, r) of the run's grid; writes ``grid.json``."""
    from mutualnet.checkpoint import load_checkpoint
    from mutualnet.data import load_data
    from mutualnet.evaluate import evaluate_grid
    from mutualnet.train import resolve_device

    device = resolve_device(config.device)
    ckpt = load_checkpoint(d, map_location=device)
    train_data = load_data(config.data_spec("train"), "train")
    val = load_data(config.data_spec("val"), "val")
    points = evaluate_grid(ckpt.model, spec.eval_widths, RESOLUTIONS, val, train_data,
                           calib_images=min(s.calib_images, len(train_data)),
                           calib_batch_size=config.calib_batch_size,
                           batch_size=config.eval_batch_size, device=device, seed=0,
                           progress=s.progress)
    doc = {"run": spec.name, "group": spec.group, "seed": spec.seed, "model": str(spec.model),
           "calib_images": min(s.calib_images, len(train_data)), "val_images": len(val),
           "checkpoint_sha256": ckpt.sha256,
           "points": [dataclasses.asdict(p) for p in points]}
    write_json(d / GRID_FILE, doc)
    return tuple(points)


def run_one(spec: RunSpec, s: Settings, out: Path) -> RunResult:
    """Train + evaluate one run, reusing whatever a previous (crashed) sweep finished."""
    done = load_result(spec, out)
    if done is not None:
        return done
    d = spec.dir(out)
    config = run_config(spec, s, d)
    train_run(spec, s, config, d)
    evaluate_run(spec, s, config, d)
    result = load_result(spec, out)
    assert result is not None
    return result


# ----------------------------------------------------------------------------- aggregation
def group_points(results: Sequence[RunResult], group: str) -> dict[int, list[GridPoint]]:
    """Per seed, all points of the group's runs (the three independent nets form one set)."""
    out: dict[int, list[GridPoint]] = {}
    for r in results:
        if r.spec.group == group:
            out.setdefault(r.spec.seed, []).extend(r.points)
    return out


def mean_points(per_seed: Mapping[int, Sequence[GridPoint]]) -> list[GridPoint]:
    """Top-1/top-5 averaged over seeds for each (w, r) that every seed evaluated."""
    if not per_seed:
        return []
    keyed = [{(p.width, p.resolution): p for p in pts} for pts in per_seed.values()]
    common = set(keyed[0]).intersection(*keyed[1:])
    out = []
    for key in common:
        ps = [k[key] for k in keyed]
        losses = [p.loss for p in ps if p.loss is not None]
        out.append(dataclasses.replace(ps[0], top1=statistics.fmean(p.top1 for p in ps),
                                       top5=statistics.fmean(p.top5 for p in ps),
                                       loss=statistics.fmean(losses) if losses else None))
    return sort_points(out)


def best_within(points: Sequence[GridPoint], macs: float) -> GridPoint | None:
    """The point ``mutualnet best`` picks within ``macs`` (export.budget.choose, the one
    budget rule); None when none fits."""
    from export.budget import candidates_from_points, choose
    from export.errors import BudgetError

    if not points:
        return None
    try:
        chosen = choose(candidates_from_points(points), mmacs=macs * (1 + 1e-9) / 1e6,
                        strict=True)
    except BudgetError:
        return None
    return next(p for p in points if p.id == chosen.subnet_id)


@dataclass(frozen=True)
class Budget:
    label: str
    macs: int


def claim_a_budgets(results: Sequence[RunResult]) -> list[Budget]:
    """MAC budgets: the independent nets at 32 px, and the smallest subnet (0.25 at 20 px)."""
    pts = [p for r in results if r.spec.group in CLAIM_A_GROUPS for p in r.points]
    if not pts:
        return []
    wanted = [(w, max(RESOLUTIONS)) for w in INDEPENDENT_WIDTHS] + \
        [(min(INDEPENDENT_WIDTHS), min(RESOLUTIONS))]
    by_key = {(p.width, p.resolution): p.macs for p in pts}
    return [Budget(f"w{w:.2f} @ {r} px", by_key[(w, r)]) for w, r in wanted if (w, r) in by_key]


def _fmt_top1(p: GridPoint | None, per_seed: Mapping[int, Sequence[GridPoint]]) -> str:
    if p is None:
        return "-"
    seeds = []
    for pts in per_seed.values():
        hit = [q for q in pts if (q.width, q.resolution) == (p.width, p.resolution)]
        seeds.append(f"{hit[0].top1:.2f}" if hit else "?")
    spread = f" ({' / '.join(seeds)})" if len(seeds) > 1 else ""
    return f"{p.top1:.2f}{spread} [{p.id}]"


def claim_a_table(results: Sequence[RunResult]) -> tuple[str, list[bool]]:
    """Best top-1 within each budget per method (mean over seeds, per-seed values, the
    subnet used) and whether MutualNet > US-Net > Independent holds there."""
    from mutualnet.flops import human

    per = {g: group_points(results, g) for g in CLAIM_A_GROUPS}
    means = {g: mean_points(per[g]) for g in CLAIM_A_GROUPS}
    present = [g for g in CLAIM_A_GROUPS if means[g]]
    rows, verdicts = [], []
    for b in claim_a_budgets(results):
        best = {g: best_within(means[g], b.macs) for g in present}
        accs = [best[g].top1 if best[g] is not None else None for g in present]  # type: ignore[union-attr]
        holds = len(present) >= 2 and all(
            a is not None for a in accs) and all(
            x > y for x, y in zip(accs, accs[1:], strict=False))  # type: ignore[operator]
        verdicts.append(holds)
        rows.append([f"{human(b.macs)} ({b.label})",
                     *(_fmt_top1(best[g], per[g]) for g in present),
                     "yes" if holds else "no"])
    order = " > ".join(present)
    table = markdown_table(["budget (MACs)", *present, f"{order}?"], rows) if rows else \
        "(no claim (a) runs)"
    return table, verdicts


def claim_b_table(results: Sequence[RunResult]) -> tuple[str, bool | None]:
    """Full-width top-1 (at the base resolution) of the wide net, plain vs MutualNet."""
    from mutualnet.flops import human

    rows, means = [], {}
    base = max(RESOLUTIONS)
    for g in CLAIM_B_GROUPS:
        per = group_points(results, g)
        full = {seed: [p for p in pts if p.width == 1.0 and p.resolution == base]
                for seed, pts in per.items()}
        vals = {seed: ps[0].top1 for seed, ps in full.items() if ps}
        if not vals:
            continue
        model = next(r.spec.model.label for r in results if r.spec.group == g)
        macs = next(ps[0].macs for ps in full.values() if ps)
        means[g] = statistics.fmean(vals.values())
        rows.append([f"{model} {g.lower()}", human(macs),
                     " / ".join(f"{v:.2f}" for _, v in sorted(vals.items())),
                     f"{means[g]:.2f}"])
    holds = None
    if len(means) == 2:
        holds = means["Wide MutualNet"] > means["Wide plain"]
        rows.append(["difference (MutualNet - plain)", "", "",
                     f"{means['Wide MutualNet'] - means['Wide plain']:+.2f}"])
    table = markdown_table(["network (1.0 @ 32 px)", "MACs", "top-1 per seed", "mean top-1"],
                           rows) if rows else "(no claim (b) runs)"
    return table, holds


# ----------------------------------------------------------------------------- plots
def plot_accuracy(results: Sequence[RunResult], path: Path, *, title: str = "") -> None:
    """Top-1 vs MACs (log scale): claim (a) methods left, claim (b) right; each method's
    seed-mean points faint and its Pareto front as a line (error bars: seed min-max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(CLAIM_A_GROUPS, "(a) same backbone, whole FLOPs range"),
              (CLAIM_B_GROUPS, "(b) wide network, plain vs MutualNet")]
    panels = [(gs, t) for gs, t in panels if any(r.spec.group in gs for r in results)]
    if not panels:
        raise UsageError("nothing to plot: no evaluated runs")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), dpi=120,
                             squeeze=False)
    for ax, (groups, panel_title) in zip(axes[0], panels, strict=True):
        for z, g in enumerate(reversed(groups)):  # the first group (MutualNet) on top
            per = group_points(results, g)
            pts = mean_points(per)
            if not pts:
                continue
            model = next(r.spec.model.label for r in results if r.spec.group == g)
            color = GROUP_COLORS[g]
            marker = GROUP_MARKERS[g]
            ax.scatter([p.mflops for p in pts], [p.top1 for p in pts], s=14, color=color,
                       alpha=0.35, linewidths=0, marker=marker, zorder=2 * z + 1)
            front = pareto_front(pts)
            lo, hi = _seed_range(front, per)
            ax.errorbar([p.mflops for p in front], [p.top1 for p in front],
                        yerr=[lo, hi] if len(per) > 1 else None, fmt="-" + marker,
                        color=color, markersize=5, capsize=2, zorder=2 * z + 2,
                        label=f"{g} ({model}, {len(per)} seed{'s' * (len(per) > 1)})")
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("MFLOPs (multiply-accumulates), log scale")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: GROUPS.index(labels[i].split(" (")[0]))
        ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower right",
                  fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png"))
    plt.close(fig)


def _plain_log_ticks(ax: Any) -> None:
    """Label a log axis 0.2, 0.5, 1, 2, 5, 10, ... instead of 2x10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _seed_range(front: Sequence[GridPoint], per_seed: Mapping[int, Sequence[GridPoint]]
                ) -> tuple[list[float], list[float]]:
    lo, hi = [], []
    for p in front:
        vals = [q.top1 for pts in per_seed.values() for q in pts
                if (q.width, q.resolution) == (p.width, p.resolution)]
        lo.append(p.top1 - min(vals))
        hi.append(max(vals) - p.top1)
    return lo, hi


def loss_curve(r: RunResult) -> tuple[list[float], list[float], list[float], list[float]]:
    """(epoch midpoints, epoch-mean loss) from metrics.jsonl and (epoch fraction, smoothed
    per-step loss) from steps.jsonl; the loss is the cross-entropy of the widest subnet."""
    ep = [(float(m["epoch"]) - 0.5, float(m["loss"])) for m in r.metrics if "loss" in m]
    spe = max(int(r.train.get("steps_per_epoch") or 0), 1)
    steps = [(float(x["step"]) / spe, float(x["loss"])) for x in r.steps]
    window = max(1, spe // 10)
    smooth = []
    acc = 0.0
    for i, (_, v) in enumerate(steps):
        acc += v
        if i >= window:
            acc -= steps[i - window][1]
        smooth.append(acc / min(i + 1, window))
    return ([e for e, _ in ep], [v for _, v in ep], [x for x, _ in steps], smooth)


def plot_losses(results: Sequence[RunResult], path: Path, *, title: str = "") -> None:
    """Training loss per method (cross-entropy of the widest subnet, i.e. of the full
    network for MutualNet/US-Net): epoch means as markers, the per-step curve smoothed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(CLAIM_A_GROUPS, "(a) backbone"), (CLAIM_B_GROUPS, "(b) wide network")]
    panels = [(gs, t) for gs, t in panels if any(r.spec.group in gs for r in results)]
    if not panels:
        raise UsageError("nothing to plot: no runs")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), dpi=120,
                             squeeze=False)
    styles = ("-", "--", ":", "-.")
    for ax, (groups, panel_title) in zip(axes[0], panels, strict=True):
        for r in sorted((r for r in results if r.spec.group in groups),
                        key=lambda r: (GROUPS.index(r.spec.group), r.spec.name, r.spec.seed)):
            ep_x, ep_y, st_x, st_y = loss_curve(r)
            color = GROUP_COLORS[r.spec.group]
            names = sorted({q.spec.name for q in results if q.spec.group == r.spec.group})
            ls = styles[names.index(r.spec.name) % len(styles)]
            first_seed = r.spec.seed == min(q.spec.seed for q in results if q.spec.name ==
                                            r.spec.name)
            label = _run_label(r) if first_seed else None
            alpha = 0.9 if first_seed else 0.4
            if st_x:
                ax.plot(st_x, st_y, ls, color=color, alpha=alpha * 0.6, linewidth=1)
            if ep_x:
                ax.plot(ep_x, ep_y, ls, marker="o", markersize=3, color=color, alpha=alpha,
                        label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("train cross-entropy (widest subnet)")
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png"))
    plt.close(fig)


def _run_label(r: RunResult) -> str:
    if r.spec.group == "Independent":
        return f"Independent w={r.spec.name.rsplit('-w', 1)[1]} ({r.spec.model.label})"
    return f"{r.spec.group} ({r.spec.model.label})"


# ----------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportSummary:
    dir: Path
    table: str
    failed: tuple[str, ...]
    error: str | None = None


def export_pairs(points: Sequence[GridPoint], limit: int) -> tuple[tuple[float, int], ...]:
    """The Pareto-front subnets, thinned evenly (keeping both ends) to at most ``limit``."""
    front = pareto_front(points)
    if limit < 1 or not front:
        return ()
    if len(front) > limit:
        if limit == 1:
            front = [front[-1]]
        else:
            idx = sorted({round(i * (len(front) - 1) / (limit - 1)) for i in range(limit)})
            front = [front[i] for i in idx]
    return tuple((p.width, p.resolution) for p in front)


def export_mutual(results: Sequence[RunResult], s: Settings, out: Path,
                  skip_existing: bool) -> ExportSummary | None:
    """Export the first-seed MutualNet run's Pareto-front subnets with parity checks."""
    runs = sorted((r for r in results if r.spec.name == "mutual"), key=lambda r: r.spec.seed)
    if not runs or not s.export:
        return None
    run = runs[0]
    dest = out / EXPORT_DIR / f"mutual-seed{run.spec.seed}"
    if skip_existing and (dest / "parity.json").is_file():
        return _read_export(dest)
    from export.pipeline import ExportOptions, export_checkpoint
    from mutualnet.train import resolve_device

    pairs = export_pairs(run.points, s.export_max)
    opts = ExportOptions(pairs=pairs, calib_images=s.calib_images, eval_images=s.export_images,
                         force=True, device=str(resolve_device(s.device)),
                         progress=s.progress)
    try:
        report = export_checkpoint(run.dir, dest, opts)
    except (ExportError, MutualNetError) as e:
        print(f"export of {run.dir} failed: {e}", file=sys.stderr)
        return ExportSummary(dest, "", (), str(e))
    return ExportSummary(dest, report.table, tuple(report.failed))


def _read_export(dest: Path) -> ExportSummary:
    md = (dest / "parity.md").read_text() if (dest / "parity.md").is_file() else ""
    table = "\n".join(line for line in md.splitlines() if line.startswith("|"))
    doc = json.loads((dest / "parity.json").read_text())
    failed = tuple(sn["id"] for sn in doc.get("subnets", []) if sn.get("status") != "ok")
    return ExportSummary(dest, table, failed)


# ----------------------------------------------------------------------------- GPU section
def bf16_peak(device: str, override: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where it comes from) for a CUDA device name."""
    if override is not None:
        return override, f"{override:g} TFLOP/s (given with --peak-tflops)"
    for key, tflops in BF16_DENSE_PEAKS:
        if key in device:
            return tflops, (f"{tflops:g} TFLOP/s, the {key} bf16 dense tensor-core peak "
                            "(half the datasheet's figure with sparsity)")
    return None, "unknown for this device (pass --peak-tflops)"


def gpu_rows(results: Sequence[RunResult], peak_override: float | None = None
             ) -> tuple[list[list[str]], str]:
    """One row per run name (seeds averaged): images/s, step time, cost vs the single-width
    step of the same model, peak memory, model TFLOP/s and its share of the bf16 peak.
    Runs not trained on a CUDA GPU (or smoke runs) give "not measured" rows."""
    by_name: dict[str, list[RunResult]] = {}
    for r in results:
        by_name.setdefault(r.spec.name, []).append(r)
    measured = {n: [r for r in rs if r.train.get("cuda") and not r.train.get("smoke")
                    and r.train.get("images_per_s")] for n, rs in by_name.items()}
    step_ms = {n: statistics.fmean(r.train["batch_size"] / r.train["images_per_s"] * 1e3
                                   for r in rs) for n, rs in measured.items() if rs}
    devices = sorted({r.train["device"] for rs in measured.values() for r in rs})
    if devices:
        peak, peak_note = bf16_peak(devices[0], peak_override)
    else:
        peak, peak_note = None, ("none (no run was measured on a GPU; on an H100 SXM the "
                                 f"script uses {bf16_peak('H100')[0]:g} TFLOP/s)")
    reference = {"mutual": "independent-w1.00", "us_net": "independent-w1.00",
                 "wide_mutual": "wide_plain"}
    rows = []
    for name, rs in by_name.items():
        model = rs[0].spec.model.label
        if not measured[name]:
            why = "smoke run" if any(r.train.get("smoke") for r in rs) else "trained on CPU"
            rows.append([name, model, *(["not measured"] * 6), why])
            continue
        m = measured[name]
        ips = statistics.fmean(r.train["images_per_s"] for r in m)
        ref = reference.get(name)
        cost = f"{step_ms[name] / step_ms[ref]:.2f}x {ref}" if ref in step_ms else (
            "1 (single width)" if name not in reference else "-")
        mems = [r.train["peak_memory_bytes"] for r in m if r.train.get("peak_memory_bytes")]
        mem = f"{max(mems) / 2**30:.2f}" if mems else "-"
        tflops = ips * statistics.fmean(r.train["train_macs_per_image"] for r in m) * 6 / 1e12
        share = f"{100 * tflops / peak:.1f}%" if peak else "-"
        rows.append([name, model, f"{ips:,.0f}", f"{step_ms[name]:.1f}", cost,
                     mem, f"{tflops:.1f}", share, ", ".join(sorted(
                         {r.train["device"] for r in m}))])
    return rows, peak_note


def gpu_section(results: Sequence[RunResult], s: Settings,
                peak_override: float | None = None) -> str:
    rows, peak_note = gpu_rows(results, peak_override)
    table = markdown_table(["run", "model", "train images/s", "step ms", "step cost vs "
                            "single width", "peak GPU memory GiB", "model TFLOP/s",
                            "of bf16 peak", "device / note"], rows) if rows else \
        "(no runs: not measured)"
    return (
        f"Training throughput of each run of `benchmarks/reproduce_cifar.py` (batch "
        f"{s.batch_size}, bf16 autocast, channels_last; median over epochs 2..n of the "
        "trainer's images/s, so the first epoch's warm-up is left out; seeds averaged). "
        "\"Step cost vs single width\" divides a run's step time by that of the plain "
        "full-width run of the same model (independent-w1.00 / wide_plain), measured in the "
        "same sweep. Model TFLOP/s = images/s x (forward MACs of every subnet a step runs, "
        "averaged over the trainer's first 256 subnet draws) x 2 FLOPs/MAC x 3 (forward + "
        "backward). Peak memory: `torch.cuda.max_memory_allocated` during training. "
        f"bf16 dense peak used: {peak_note}.\n\n{table}")


# ----------------------------------------------------------------------------- reports
def results_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(results, key=lambda r: (GROUPS.index(r.spec.group), r.spec.name,
                                            r.spec.seed)):
        front = {(p.width, p.resolution) for p in pareto_front(r.points)}
        for p in sort_points(r.points):
            rows.append({"run": r.spec.name, "group": r.spec.group, "model": str(r.spec.model),
                         "seed": r.spec.seed, "width": p.width, "resolution": p.resolution,
                         "macs": p.macs, "params": p.params, "top1": round(p.top1, 3),
                         "top5": round(p.top5, 3), "images": p.images,
                         "pareto_in_run": int((p.width, p.resolution) in front)})
    return rows


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic_write(path, lambda t: t.write_text(buf.getvalue()))


def results_markdown(results: Sequence[RunResult], s: Settings, command: str,
                     export: ExportSummary | None) -> str:
    a_table, a_verdicts = claim_a_table(results)
    b_table, b_holds = claim_b_table(results)
    where = "the bundled CIFAR-10 subset" if s.data is None else f"`{s.data.name}`"
    n_train = s.train_images or "all"
    lines = [
        "# CIFAR-10 reproduction of MutualNet's claims",
        "",
        f"Command: `{command}`",
        "",
        f"Data: {where} ({n_train} training images"
        f"{', ' + str(s.val_images) + ' test images' if s.val_images else ''}); "
        f"{s.epochs} epoch{'s' * (s.epochs > 1)}, batch {s.batch_size}, lr {s.lr:g} per 128 images (cosine, "
        "SGD Nesterov 0.9, wd 5e-4), pad-4 crop + flip; seeds "
        f"{', '.join(map(str, s.seeds))}. Backbone for claim (a): {s.backbone.label}; wide "
        f"network for claim (b): {s.wide.label}. Every subnet is BN-calibrated on "
        f"{s.calib_images} training images before it is evaluated on the test split."
        + (" **Smoke run: the figures say nothing about the claims.**" if s.smoke else ""),
        "",
        "## Claim (a): MutualNet > US-Net > independent over the FLOPs range",
        "",
        "Best top-1 (%) within each MAC budget, mean over seeds (per-seed values) "
        "[the subnet that achieves it]. Budgets: the independent networks at 32 px and the "
        "smallest subnet.",
        "",
        a_table,
        "",
        f"Claim (a) holds at {sum(a_verdicts)} of {len(a_verdicts)} budgets in these runs.",
        "",
        "## Claim (b): MutualNet boosts the full network",
        "",
        b_table,
        "",
        {True: "Claim (b) holds in these runs.", False: "Claim (b) does NOT hold in these runs.",
         None: "Claim (b) was not run."}[b_holds],
        "",
        "![top-1 vs MACs](accuracy_vs_macs.png)",
        "",
        "![train loss](train_loss.png)",
        "",
    ]
    if export is not None:
        lines += ["## Export of the MutualNet run (end-to-end check)", ""]
        if export.error:
            lines += [f"Export failed: {export.error}", ""]
        else:
            lines += [f"Pareto-front subnets of `{export.dir.name}` exported to ONNX with "
                      "parity checks (`export.pipeline.export_checkpoint`):", "",
                      export.table, "",
                      "All subnets passed parity." if not export.failed else
                      f"Parity FAILED for: {', '.join(export.failed)}.", ""]
    return "\n".join(lines)


def plot_title(s: Settings) -> str:
    data = "CIFAR-10 subset (bundled)" if s.data is None else "CIFAR-10"
    if s.train_images:
        data += f", {s.train_images} train images"
    seeds = f"seed{'s' * (len(s.seeds) > 1)} {', '.join(map(str, s.seeds))}"
    title = (f"{data}, {s.epochs} epoch{'s' * (s.epochs > 1)}, batch {s.batch_size}, {seeds}; "
             "every subnet BN-calibrated")
    return title + ("\nSMOKE RUN (tiny models, tiny data): not a result" if s.smoke else "")


def write_report(results: Sequence[RunResult], s: Settings, out: Path, command: str,
                 export: ExportSummary | None, peak_override: float | None) -> dict[str, Path]:
    """Write results.csv/json, the two PNGs, results.md and gpu_section.md into ``out``."""
    rows = results_rows(results)
    paths = {"csv": out / "results.csv", "json": out / "results.json",
             "accuracy_png": out / "accuracy_vs_macs.png", "loss_png": out / "train_loss.png",
             "md": out / "results.md", "gpu_md": out / "gpu_section.md"}
    write_csv(paths["csv"], rows)
    a_table, a_verdicts = claim_a_table(results)
    _, b_holds = claim_b_table(results)
    write_json(paths["json"], {
        "settings": s.describe(), "command": command,
        "claim_a_holds_per_budget": a_verdicts, "claim_b_holds": b_holds,
        "runs": [{"run": r.spec.name, "group": r.spec.group, "seed": r.spec.seed,
                  "model": str(r.spec.model), "dir": str(r.dir), "train": dict(r.train),
                  "points": [dataclasses.asdict(p) for p in sort_points(r.points)]}
                 for r in results],
        "export": None if export is None else {"dir": str(export.dir), "failed":
                                               list(export.failed), "error": export.error},
    })
    note = plot_title(s)
    plot_accuracy(results, paths["accuracy_png"], title=note)
    plot_losses(results, paths["loss_png"], title=note)
    md = results_markdown(results, s, command, export)
    atomic_write(paths["md"], lambda t: t.write_text(md))
    gpu = gpu_section(results, s, peak_override)
    atomic_write(paths["gpu_md"], lambda t: t.write_text(gpu + "\n"))
    return paths


def publish_docs(paths: Mapping[str, Path], docs: Path = DOCS_DIR) -> list[Path]:
    """Copy the report into ``docs/reproduce/`` (atomically per file)."""
    written = []
    for key in ("csv", "json", "accuracy_png", "loss_png", "md"):
        src = paths[key]
        dst = docs / src.name
        atomic_write(dst, lambda t, src=src: shutil.copyfile(src, t))  # type: ignore[misc]
        written.append(dst)
    return written


# ----------------------------------------------------------------------------- CLI
SMOKE: dict[str, Any] = {"backbone": "tiny_mobilenet", "wide": "wrn:depth=10,widen_factor=1", "epochs": 1,
         "batch_size": 32, "seeds": "0", "train_images": 320, "val_images": 200,
         "calib_images": 128, "grid_widths": "0.25,0.5,0.75,1.0", "export_max": 3,
         "export_images": 100}
FULL: dict[str, Any] = {"backbone": "wrn:depth=16,widen_factor=4", "wide": "wrn:depth=16,widen_factor=8",
        "epochs": 30, "batch_size": 128, "seeds": "0,1", "train_images": None,
        "val_images": None, "calib_images": 10000,
        "grid_widths": "0.25,0.375,0.5,0.625,0.75,0.875,1.0", "export_max": 6,
        "export_images": 1000}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce_cifar.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults (full / --smoke): " + "; ".join(
            f"{k} {FULL[k]} / {SMOKE[k]}" for k in FULL))
    a = p.add_argument
    a("--data", help=f"the CIFAR-10 npz (default {DEFAULT_DATA}; --smoke: the bundled subset)")
    a("--out", default=str(DEFAULT_OUT), help="sweep directory (default %(default)s)")
    a("--smoke", action="store_true", help="tiny CPU check: bundled subset, tiny models")
    a("--methods", default="all", help=f"comma list of {', '.join(METHODS)} (or all, claim_a, "
                                       "claim_b)")
    a("--epochs", type=int)
    a("--batch-size", type=int)
    a("--lr", type=float, default=0.1, help="learning rate per 128 images (default 0.1)")
    a("--seeds", help="comma list of seeds (each config runs once per seed)")
    a("--backbone", help="claim (a) model, NAME[:key=value,...]")
    a("--wide", help="claim (b) model, NAME[:key=value,...]")
    a("--grid-widths", help="comma list of widths evaluated for MutualNet/US-Net")
    a("--train-images", type=int, help="use only the first N training images")
    a("--val-images", type=int, help="evaluate on only the first N test images")
    a("--calib-images", type=int, help="BN calibration images per subnet")
    a("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    a("--eval-each-epoch", action="store_true", help="also evaluate 2 subnets every epoch")
    a("--no-export", action="store_true", help="skip exporting the MutualNet subnets")
    a("--export-max", type=int, help="export at most N Pareto-front subnets")
    a("--export-images", type=int, help="held-out images for export parity")
    a("--skip-existing", action="store_true", help="resume: keep finished runs, continue "
                                                   "interrupted ones from their checkpoint")
    a("--overwrite", action="store_true", help="delete earlier results of the planned runs")
    a("--report-only", action="store_true", help="train nothing; report the finished runs")
    a("--docs", action="store_true", help="copy results to docs/reproduce/ and write the GPU "
                                          "section of BENCHMARKS.md")
    a("--benchmarks", action="store_true", help="write the GPU section of BENCHMARKS.md")
    a("--peak-tflops", type=float, help="bf16 dense peak of the GPU (default: by device name)")
    a("--quiet", action="store_true", help="no progress bars")
    return p


def _numbers(text: str, what: str, kind: type, *, unique: bool = False) -> tuple:
    """Parse a comma list of ``kind`` (float or int) for option ``--what``."""
    noun = "integers" if kind is int else "numbers"
    try:
        vals = tuple(kind(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--{what} must be a comma list of {noun}, got {text!r}") from None
    if not vals:
        raise UsageError(f"--{what} needs at least one value")
    if unique and len(set(vals)) != len(vals):
        raise UsageError(f"--{what} lists a value twice: {text!r}")
    return vals


def parse_methods(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        names = METHOD_ALIASES.get(item, (item,))
        for n in names:
            if n not in METHODS:
                raise UsageError(f"unknown method {n!r} in --methods; use {', '.join(METHODS)} "
                                 "or all, claim_a, claim_b")
            if n not in out:
                out.append(n)
    if not out:
        raise UsageError("--methods needs at least one method")
    return tuple(m for m in METHODS if m in out)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validate the arguments; --smoke changes the defaults, explicit options still win."""
    base = SMOKE if args.smoke else FULL

    def pick(name: str) -> Any:
        v = getattr(args, name)
        return base[name] if v is None else v

    if (args.docs or args.benchmarks) and args.smoke:
        raise UsageError("--docs/--benchmarks publish results; a --smoke run publishes "
                         "nothing (drop one of them)")
    if args.skip_existing and args.overwrite:
        raise UsageError("--skip-existing keeps earlier results, --overwrite deletes them: "
                         "pick one")
    data: Path | None
    if args.data is not None:
        data = Path(args.data).expanduser()
    else:
        data = None if args.smoke else DEFAULT_DATA
    if data is not None and not data.is_file() and not args.report_only:
        raise UsageError(f"the CIFAR-10 npz {data} does not exist; pass --data PATH (format: "
                         "../shared/data/README.md) or use --smoke for the bundled subset")
    for name in ("epochs", "batch_size", "calib_images", "export_images"):
        v = pick(name)
        if v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    for name in ("train_images", "val_images"):
        v = pick(name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if pick("export_max") < 0:
        raise UsageError("--export-max must be >= 0")
    if not args.lr > 0 or not math.isfinite(args.lr):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise UsageError("--peak-tflops must be positive")
    widths = tuple(sorted(set(_numbers(str(pick("grid_widths")), "grid-widths", float))))
    lo, hi = CLAIM_A_RANGE
    bad = [w for w in widths if not lo - 1e-9 <= w <= hi + 1e-9]
    if bad:
        raise UsageError(f"--grid-widths {bad[0]:g} is outside the trained range [{lo}, {hi}]")
    seeds = _numbers(str(pick("seeds")), "seeds", int, unique=True)
    if any(x < 0 for x in seeds):
        raise UsageError("--seeds must be >= 0")
    device = args.device
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return Settings(
        data=data, backbone=ModelRef.parse(pick("backbone")), wide=ModelRef.parse(pick("wide")),
        epochs=pick("epochs"), batch_size=pick("batch_size"), lr=args.lr, seeds=seeds,
        methods=parse_methods(args.methods), grid_widths=widths,
        train_images=pick("train_images"), val_images=pick("val_images"),
        calib_images=pick("calib_images"), device=device, export=not args.no_export,
        export_max=pick("export_max"), export_images=pick("export_images"),
        eval_each_epoch=args.eval_each_epoch, smoke=args.smoke, progress=not args.quiet)


SETTINGS_FILE = "sweep.json"
#: Settings that may change between a sweep and its resumption / report.
FREE_SETTINGS = frozenset({"progress", "export", "export_max", "export_images", "methods",
                           "seeds", "device"})


def check_out_dir(out: Path, s: Settings, *, skip_existing: bool, overwrite: bool,
                  report_only: bool) -> None:
    """Refuse to mix results of different settings, or to clobber results silently."""
    f = out / SETTINGS_FILE
    if not f.is_file():
        if report_only:
            raise UsageError(f"{out} holds no sweep ({SETTINGS_FILE} missing); run the sweep "
                             "first or pass its --out")
        if (out / RUNS_DIR).is_dir() and any((out / RUNS_DIR).iterdir()) and not overwrite:
            raise UsageError(f"{out}/{RUNS_DIR} holds runs of an unknown sweep; pick another "
                             "--out or pass --overwrite")
        return
    old = json.loads(f.read_text())
    new = s.describe()
    diff = [k for k in new if k not in FREE_SETTINGS and old.get(k) != _jsonable(new[k])]
    if diff and not overwrite:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {_jsonable(new[k])!r}" for k in diff[:3])
        raise UsageError(f"{out} holds a sweep with other settings ({details}); use the same "
                         "options, another --out, or --overwrite")
    if not (skip_existing or overwrite or report_only):
        raise UsageError(f"{out} already holds a sweep; pass --skip-existing to resume it, "
                         "--report-only to re-plot it, or --overwrite to start again")


def stored_settings(out: Path, *, progress: bool) -> Settings:
    """The settings a sweep in ``out`` was run with (for --report-only)."""
    f = out / SETTINGS_FILE
    if not f.is_file():
        raise UsageError(f"{out} holds no sweep ({SETTINGS_FILE} missing); run the sweep "
                         "first or pass its --out")
    try:
        d = json.loads(f.read_text())
        data = None if d["data"] == "cifar10_bundled" else Path(d["data"])
        return Settings(
            data=data, backbone=ModelRef.parse(d["backbone"]), wide=ModelRef.parse(d["wide"]),
            epochs=int(d["epochs"]), batch_size=int(d["batch_size"]), lr=float(d["lr"]),
            seeds=tuple(d["seeds"]), methods=tuple(d["methods"]),
            grid_widths=tuple(d["grid_widths"]), train_images=d["train_images"],
            val_images=d["val_images"], calib_images=int(d["calib_images"]),
            device=d["device"], export=bool(d["export"]), export_max=int(d["export_max"]),
            export_images=int(d["export_images"]), eval_each_epoch=bool(d["eval_each_epoch"]),
            smoke=bool(d["smoke"]), progress=progress)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise UsageError(f"{f} is not a sweep settings file of this script ({e})") from None


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v))


def sweep(s: Settings, out: Path, *, skip_existing: bool, overwrite: bool,
          report_only: bool) -> list[RunResult]:
    """Train and evaluate every planned run (or, report_only, collect the finished ones)."""
    from tqdm import tqdm

    check_out_dir(out, s, skip_existing=skip_existing, overwrite=overwrite,
                  report_only=report_only)
    runs = plan_runs(s)
    if report_only:
        found = [r for r in (load_result(spec, out) for spec in runs) if r is not None]
        missing = len(runs) - len(found)
        if missing:
            print(f"note: {missing} planned run(s) have no results in {out}", file=sys.stderr)
        return found
    if overwrite:
        for spec in runs:
            if spec.dir(out).exists():
                shutil.rmtree(spec.dir(out))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SETTINGS_FILE, s.describe())
    results = []
    bar = tqdm(runs, desc="sweep", unit="run", disable=not s.progress, file=sys.stderr,
               position=0)
    for spec in bar:
        bar.set_postfix_str(f"{spec.name} seed {spec.seed}")
        r = run_one(spec, s, out)
        best = max(r.points, key=lambda p: p.top1)
        tqdm.write(f"{spec.name} seed {spec.seed}: {len(r.points)} subnets, best top-1 "
                   f"{best.top1:.2f}% at {best.id}", file=sys.stderr)
        results.append(r)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python benchmarks/reproduce_cifar.py " + shlex.join(
        list(argv if argv is not None else sys.argv[1:]))
    try:
        out = Path(args.out).expanduser()
        s = settings_from_args(args)
        if args.report_only:
            s = stored_settings(out, progress=s.progress)
            if s.smoke and (args.docs or args.benchmarks):
                raise UsageError(f"{out} holds a --smoke sweep: it publishes nothing "
                                 "(drop --docs/--benchmarks)")
        results = sweep(s, out, skip_existing=args.skip_existing, overwrite=args.overwrite,
                        report_only=args.report_only)
        if not results:
            raise UsageError(f"no finished runs in {out} to report")
        export = None
        if not args.report_only:
            export = export_mutual(results, s, out, skip_existing=args.skip_existing)
        elif (out / EXPORT_DIR).is_dir():
            seeds = sorted(r.spec.seed for r in results if r.spec.name == "mutual")
            dest = out / EXPORT_DIR / f"mutual-seed{seeds[0]}" if seeds else None
            if dest is not None and (dest / "parity.json").is_file():
                export = _read_export(dest)
        paths = write_report(results, s, out, command.strip(), export, args.peak_tflops)
        print((out / "results.md").read_text())
        print(paths["gpu_md"].read_text())
        if args.docs:
            for p in publish_docs(paths):
                print(f"wrote {p}", file=sys.stderr)
        if args.docs or args.benchmarks:
            write_section(BENCH_KEY, BENCH_TITLE, paths["gpu_md"].read_text(), command.strip())
        if export is not None and (export.error or export.failed):
            return 1
        return 0
    except (MutualNetError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        print("interrupted; resume with --skip-existing", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
