"""Equivalence with the original supernets: same weights, same BN statistics, same logits?

For each pair in ``_pairs.PAIRS`` (MutualNet's MobileNet v1 / v2, ResNet-50 and
WRN-28-10; US-Nets' MobileNet v1 / v2) this builds the original supernet and ours with
the same width range, gives the original random weights (random BN affine and biases
too, so slicing shows), copies them into ours along a mapping by order and shape that
is checked pair by pair (shape, layer kind, weight/bias), then:

* channel counts layer by layer: every conv / BN / linear layer's (in, out, output
  side) on a grid of widths spanning the range (train mode, small input);
* at widths {min, middle, max} x 2 resolutions: BatchNorm statistics calibrated on the
  same batches, the original with its own ``ComputePostBN.ComputeBN`` (US-Nets has no
  such function: ours are copied into its per-width buffers), ours with SPEC section 4's
  procedure; the calibrated statistics are compared, then eval-mode logits on two
  further images, and the channels/sides of that forward.

Records the table in BENCHMARKS.md (section "peer_equivalence").

    python benchmarks/peer/equivalence.py [--models mobilenet_v1,resnet50] [--no-record]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from benchmarks.peer._pairs import (  # noqa: E402
    DIVERGENT,
    PAIRS,
    PairSpec,
    Theirs,
    build_ours,
    build_theirs,
    calibrate_ours,
    channel_record,
    copy_weights,
    first_mismatch,
    layer_modules,
    load_ref,
    map_parameters,
    randomize,
    resize,
    set_reference_width,
)
from benchmarks.peer._refs import commits_line, cpu_cuda_shim, missing_message  # noqa: E402
from mutualnet.slimmable import SlimmableNet  # noqa: E402

CALIB_BATCHES, CALIB_BATCH, EVAL_BATCH = 2, 2, 2
GRID_STEPS = 13


@dataclass(frozen=True)
class PointResult:
    width: float
    resolution: int
    max_abs_diff: float
    max_abs_logit: float
    bn_stat_diff: float          # max |their running stat - ours| over every BN layer
    channels: str | None         # first channel/side mismatch, None when all agree


@dataclass(frozen=True)
class PairResult:
    spec: PairSpec
    tensors: int
    elements: int
    grid_widths: int
    grid_mismatch: str | None
    points: tuple[PointResult, ...]
    seconds: float

    @property
    def worst(self) -> PointResult:
        return max(self.points, key=lambda p: p.max_abs_diff)


def tolerance(max_abs_logit: float) -> float:
    """Float precision on logits: 1e-5 relative to their size (at least 1e-5 absolute)."""
    return 1e-5 * max(1.0, max_abs_logit)


def _grid(spec: PairSpec) -> list[float]:
    lo, hi = spec.width_range
    return [round(lo + (hi - lo) * i / (GRID_STEPS - 1), 6) for i in range(GRID_STEPS)]


@torch.no_grad()
def check_grid(theirs: Theirs, ours: SlimmableNet, spec: PairSpec) -> str | None:
    """Channels and sides of every layer at GRID_STEPS widths, train mode, small input."""
    r = 32 if spec.resolutions[0] <= 32 else 64
    x = torch.randn(2, 3, r, r)
    model = theirs.at(r)
    model.train()
    ours.train()
    names = [n for n, _ in layer_modules(ours)]
    for w in _grid(spec):
        set_reference_width(model, w)
        a = channel_record(model, lambda m=model: m(x))
        with ours.subnet(w):
            b = channel_record(ours, lambda: ours(x))
        bad = first_mismatch(a, b, names)
        if bad:
            return f"width {w}: {bad}"
    return None


def _their_bn_stats(model: nn.Module, width: float, flags: object) -> list[torch.Tensor]:
    """The statistics the original uses at ``width``, in layer order, sliced to the active
    channels (USBatchNorm2d keeps one holder per width of FLAGS.width_mult_list)."""
    idx = list(flags.width_mult_list).index(width)  # type: ignore[attr-defined]
    out = []
    for _, m in layer_modules(model):
        if not isinstance(m, nn.BatchNorm2d):
            continue
        holder = m.bn[idx] if hasattr(m, "bn") else m
        out.append(torch.stack((holder.running_mean, holder.running_var)))
    return out


def _our_bn_stats(model: SlimmableNet) -> list[torch.Tensor]:
    return [torch.stack((m.running_mean, m.running_var))  # type: ignore[arg-type]
            for _, m in layer_modules(model) if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def _copy_stats_into_theirs(model: nn.Module, ours: SlimmableNet, width: float,
                            flags: object) -> None:
    idx = list(flags.width_mult_list).index(width)  # type: ignore[attr-defined]
    theirs = [m for _, m in layer_modules(model) if isinstance(m, nn.BatchNorm2d)]
    mine = [m for _, m in layer_modules(ours) if isinstance(m, nn.BatchNorm2d)]
    for m, om in zip(theirs, mine, strict=True):
        holder = m.bn[idx] if hasattr(m, "bn") else m
        c = min(holder.running_mean.shape[0], om.running_mean.shape[0])
        holder.running_mean[:c].copy_(om.running_mean[:c])
        holder.running_var[:c].copy_(om.running_var[:c])


def _stat_diff(model: nn.Module, ours: SlimmableNet, width: float, flags: object,
               plan_out: list[int]) -> float:
    worst = 0.0
    theirs = _their_bn_stats(model, width, flags)
    for t, o, c in zip(theirs, _our_bn_stats(ours), plan_out, strict=True):
        worst = max(worst, float((t[:, :c] - o[:, :c]).abs().max()))
    return worst


@torch.no_grad()
def check_point(theirs: Theirs, ours: SlimmableNet, spec: PairSpec, width: float,
                resolution: int, calib: list[torch.Tensor], x: torch.Tensor) -> PointResult:
    model = theirs.at(resolution)
    flags = theirs.ref.flags  # type: ignore[attr-defined]
    set_reference_width(model, width)
    calibrate_ours(ours, width, resolution, calib)
    if spec.ref == "MutualNet":
        post = theirs.ref["ComputePostBN"]  # type: ignore[attr-defined]
        loader = [([xb], None) for xb in calib]
        with cpu_cuda_shim():
            post.ComputeBN(model, loader, resolution, num_batch=len(loader))
    else:
        _copy_stats_into_theirs(model, ours, width, flags)
    model.eval()
    ours.eval()
    with ours.subnet(width):
        bn_out = [m.active_out for _, m in layer_modules(ours)  # type: ignore[misc]
                  if isinstance(m, nn.BatchNorm2d)]
    stat = _stat_diff(model, ours, width, flags, bn_out)
    xr = resize(x, resolution)
    got: dict[str, torch.Tensor] = {}
    a = channel_record(model, lambda: got.__setitem__("t", model(xr)))
    with ours.subnet(width):
        b = channel_record(ours, lambda: got.__setitem__("o", ours(xr)))
    names = [n for n, _ in layer_modules(ours)]
    diff = float((got["t"] - got["o"]).abs().max())
    return PointResult(width, resolution, diff, float(got["t"].abs().max()), stat,
                       first_mismatch(a, b, names))


def run_pair(spec: PairSpec, seed: int = 0) -> PairResult:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    widths = spec.widths()
    ref = load_ref(spec, widths, extra=("ComputePostBN",) if spec.ref == "MutualNet" else ())
    theirs = Theirs(ref, spec)
    ours = build_ours(spec)
    randomize(theirs.main, seed)
    mapping = copy_weights(theirs.main, ours)
    grid_bad = check_grid(theirs, ours, spec)
    base = spec.resolutions[0]
    g = torch.Generator().manual_seed(seed + 1)
    calib = [torch.randn(CALIB_BATCH, 3, base, base, generator=g) for _ in range(CALIB_BATCHES)]
    x = torch.randn(EVAL_BATCH, 3, base, base, generator=g)
    points = tuple(check_point(theirs, ours, spec, w, r, calib, x)
                   for r in spec.resolutions for w in widths)
    return PairResult(spec, mapping.tensors, mapping.elements, GRID_STEPS, grid_bad, points,
                      time.perf_counter() - t0)


def check_divergent() -> list[tuple[str, str]]:
    """Build every DIVERGENT pair and confirm that the mapping fails where explained."""
    out = []
    for spec, expect, why in DIVERGENT:
        if missing_message([spec.ref]):
            continue
        ref = load_ref(spec, spec.widths())
        try:
            map_parameters(build_theirs(ref, spec), build_ours(spec))
        except AssertionError as exc:
            status = "as explained" if expect in str(exc) else f"UNEXPECTED: {exc}"
            out.append((spec.label, f"{exc} ({status}): {why}"))
        else:
            out.append((spec.label, "UNEXPECTED: the mapping now succeeds; move it to PAIRS"))
    return out


@torch.no_grad()
def us_nets_calibration_moves_stats() -> bool | None:
    """US-Nets' own calibration steps, as its ``run_one_epoch(phase='cal')`` runs them
    (``model.eval()``, ``model.apply(bn_calibration_init)`` with cumulative_bn_stats, then
    forwards): do the USBatchNorm2d statistics change? None when US-Nets is absent."""
    if missing_message(["slimmable_networks"]):
        return None
    spec = next(s for s in PAIRS if s.ref == "slimmable_networks")
    ref = load_ref(spec, [1.0], extra=("models.slimmable_ops",))
    ref.flags.cumulative_bn_stats = True
    model = build_theirs(ref, spec)
    model.eval()
    model.apply(ref["models.slimmable_ops"].bn_calibration_init)
    set_reference_width(model, 1.0)
    model(torch.randn(4, 3, spec.resolutions[0], spec.resolutions[0]))
    bn = [m for _, m in layer_modules(model) if hasattr(m, "bn")]
    return any(bool((m.bn[0].running_mean != 0).any()) for m in bn)


def _fmt(v: float) -> str:
    return "0" if v == 0 else f"{v:.1e}"


def report(results: list[PairResult], divergent: list[tuple[str, str]],
           us_cal: bool | None = None) -> str:
    rows = []
    for res in results:
        w = res.worst
        ok = all(p.max_abs_diff <= tolerance(p.max_abs_logit) and p.channels is None
                 for p in res.points) and res.grid_mismatch is None
        rows.append([
            res.spec.label, f"{res.tensors} / {res.elements:,}",
            f"{len(res.points)}: w {', '.join(str(v) for v in res.spec.widths())} x r "
            f"{', '.join(str(r) for r in res.spec.resolutions)}",
            f"{_fmt(w.max_abs_diff)} (w {w.width}, r {w.resolution}; max logit "
            f"{w.max_abs_logit:.2f})",
            _fmt(max(p.bn_stat_diff for p in res.points)),
            "all equal" if res.grid_mismatch is None and all(p.channels is None
                                                             for p in res.points)
            else (res.grid_mismatch or next(p.channels for p in res.points if p.channels)),
            "yes" if ok else "**NO**", f"{res.seconds:.0f}",
        ])
    table = markdown_table(
        ["pair (ours vs original)", "params mapped (tensors / elements)",
         "points compared", "worst max-abs-diff of logits", "worst BN-stat diff",
         f"channels + sides (every layer, {GRID_STEPS}-width grid and every point)",
         "float-precision equal", "s"], rows)
    detail = ["| pair | width | res | max-abs-diff | max abs logit |", "|---|---|---|---|---|"]
    for res in results:
        for p in res.points:
            detail.append(f"| {res.spec.label} | {p.width} | {p.resolution} | "
                          f"{_fmt(p.max_abs_diff)} | {p.max_abs_logit:.2f} |")
    div = "".join(f"\n- {label}: {text}" for label, text in divergent)
    return (f"References: {commits_line()}.\n\n{table}\n\n"
            "Random weights (BN affine and biases too), eval mode; BN statistics calibrated "
            f"on the same {CALIB_BATCHES} batches of {CALIB_BATCH} random images per point "
            "(MutualNet: its own `ComputePostBN.ComputeBN`; US-Nets: ours copied in, so its "
            "BN-stat diff is 0 by construction"
            + ("; US-Nets' own calibration steps leave its USBatchNorm2d statistics at "
               "their reset values here: its `run_one_epoch(phase='cal')` puts the model in "
               "eval mode and `bn_calibration_init` switches to training only the modules "
               "that track running stats, i.e. the per-width holders, never the "
               "USBatchNorm2d that is called" if us_cal is False else "")
            + f"); logits on {EVAL_BATCH} further images, "
            "resized bilinearly (align_corners=True). Tolerance: 1e-5 x max(1, max |logit|). "
            "The originals evaluate only widths listed in `width_mult_list` (their "
            "per-width BN holders; any other width fails in eval mode with \"running_mean "
            "must be defined\"), so the three widths are put there."
            + (f"\n\nNot comparable, by design:{div}" if div else "") + "\n\n"
            "<details><summary>every point</summary>\n\n" + "\n".join(detail)
            + "\n\n</details>")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None,
                    help="comma list of our model names to compare (default: all pairs)")
    ap.add_argument("--no-record", action="store_true", help="print only, leave BENCHMARKS.md")
    args = ap.parse_args(argv)
    wanted = None if args.models is None else set(args.models.split(","))
    specs = [s for s in PAIRS if wanted is None or s.ours in wanted]
    results = []
    for spec in specs:
        msg = missing_message([spec.ref])
        if msg:
            print(msg)
            continue
        res = run_pair(spec)
        print(f"{spec.label}: worst {res.worst.max_abs_diff:.2e}, grid {res.grid_mismatch}, "
              f"{res.seconds:.1f}s", flush=True)
        results.append(res)
    if not results:
        return 0
    body = report(results, check_divergent() if wanted is None else [],
                  us_nets_calibration_moves_stats())
    cmd = "python benchmarks/peer/equivalence.py" + (f" --models {args.models}"
                                                    if args.models else "")
    if args.no_record:
        print(body)
    else:
        write_section("peer_equivalence", "Against the original implementations: equivalence",
                      body, cmd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
