"""FLOPs: the originals' profiler (``utils/model_profiling.py``) vs ``mutualnet.flops.count``.

For every model the originals build (MutualNet: MobileNet v1 / v2, ResNet-50, WRN-28-10;
US-Nets: MobileNet v1 / v2) at several widths and two resolutions, this runs their
forward-hook profiler on their own supernet (CPU; shims: ``torch.cuda.synchronize`` made
a no-op, and its per-layer timing loop cut from 10 runs to 1, which changes no count) and
our analytic count, and explains every difference. It also runs MutualNet's profiler with
the one-line divisor change of its commit b155755 reverted (``make_divisible(divisor=1)``,
the code published 2020-07-10..15 while the released weights used 8), on a model built
with that divisor, and shows what happens when weights built with 8 meet code that
rounds with 1.

Records the tables in BENCHMARKS.md (section "peer_flops").

    python benchmarks/peer/flops.py [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from benchmarks.peer._pairs import (  # noqa: E402
    PAIRS,
    PairSpec,
    Theirs,
    build_ours,
    build_theirs,
    find_pair,
    layer_modules,
    load_ref,
)
from benchmarks.peer._refs import (  # noqa: E402
    Reference,
    commits_line,
    cpu_cuda_shim,
    missing_message,
    set_width,
)
from mutualnet.flops import count, human  # noqa: E402
from mutualnet.slimmable import GlobalAvgPool, SlimmableNet  # noqa: E402


@dataclass(frozen=True)
class Row:
    spec: PairSpec
    width: float
    resolution: int
    their_macs: int
    our_macs: int
    their_params: int
    our_params: int
    our_conv_linear_params: int
    div1_macs: int | None
    why: str


def widths_of(spec: PairSpec) -> list[float]:
    lo, hi = spec.width_range
    return sorted({round(lo + (hi - lo) * k / 3, 3) for k in range(4)})


def profile(ref: Reference, model: nn.Module, width: float, resolution: int) -> tuple[int, int]:
    """Their ``model_profiling`` at (width, resolution): (MACs, params), output silenced."""
    prof = ref["utils.model_profiling"]
    prof.num_forwards = 1          # their timing loop; no effect on the counts
    set_width(model, width)
    with contextlib.redirect_stdout(io.StringIO()), cpu_cuda_shim(), torch.no_grad():
        macs, params = prof.model_profiling(model, resolution, resolution, use_cuda=False,
                                            verbose=False)
    return int(macs), int(params)


@contextlib.contextmanager
def divisor(ref: Reference, value: int) -> Iterator[None]:
    """MutualNet's ``make_divisible`` with another default divisor (the b155755 diff)."""
    ops = ref["models.slimmable_ops"]
    saved = ops.make_divisible.__defaults__
    ops.make_divisible.__defaults__ = (value, 1)
    try:
        yield
    finally:
        ops.make_divisible.__defaults__ = saved


def _pool_macs(ours: SlimmableNet, width: float, resolution: int) -> int:
    from mutualnet.slimmable import spatial_size

    total = 0
    for layer, (i, _) in zip(ours.slim_layers, ours.plan(width), strict=True):
        if isinstance(layer, GlobalAvgPool):
            total += i * spatial_size(layer.path, resolution) ** 2
    return total


def _bn_params(ours: SlimmableNet, width: float) -> int:
    with ours.subnet(width):
        return sum(2 * m.active_out for _, m in layer_modules(ours)  # type: ignore[misc]
                   if isinstance(m, nn.BatchNorm2d) and m.affine)


def explain(spec: PairSpec, width: float, resolution: int, their: int, ours: int,
            model: SlimmableNet) -> str:
    if their == ours:
        return "equal"
    pool = _pool_macs(model, width, resolution)
    if spec.module.endswith("wideresnet") and ours - their == pool:
        return (f"ours +{pool:,} = the global average pool, which their WRN calls as "
                "F.adaptive_avg_pool2d (a function: no module, no hook, not counted)")
    return f"UNEXPLAINED: ours - theirs = {ours - their:,}"


def run_spec(spec: PairSpec, div1_crash: list[str]) -> list[Row]:
    mutual = spec.ref == "MutualNet"
    extra = ["utils.model_profiling"] + (["models.slimmable_ops"] if mutual else [])
    widths = widths_of(spec)
    ref = load_ref(spec, widths, extra=extra)
    theirs = Theirs(ref, spec)
    ours = build_ours(spec)
    div1_model = None
    if mutual:
        with divisor(ref, 1):
            div1_model = build_theirs(ref, spec)
    rows = []
    points = [(w, spec.resolutions[0]) for w in widths]
    points += [(w, spec.resolutions[1]) for w in (widths[0], widths[-1])]
    for w, r in points:
        t_macs, t_params = profile(ref, theirs.at(r), w, r)
        cost = count(ours, w, r)
        d1 = None
        if div1_model is not None:
            with divisor(ref, 1):
                d1 = profile(ref, div1_model, w, r)[0]
        bn = _bn_params(ours, w)
        rows.append(Row(spec, w, r, t_macs, cost.macs, t_params, cost.params,
                        cost.params - bn, d1, explain(spec, w, r, t_macs, cost.macs, ours)))
        if d1 is not None and d1 != t_macs and not div1_crash:
            div1_crash.append(_crash_with_divisor_1(ref, theirs.main, spec, w, r))
    return rows


def _crash_with_divisor_1(ref: Reference, model: nn.Module, spec: PairSpec, w: float,
                          r: int) -> str:
    """A model built with divisor 8, run by code that rounds with 1 (MutualNet issue #3),
    at a width listed in FLAGS.width_mult_list (so the original can evaluate it)."""
    set_width(model, w)
    model.eval()
    try:
        with divisor(ref, 1), torch.no_grad():
            model(torch.randn(1, 3, r, r))
    except RuntimeError as exc:
        return f"{spec.ours} at width {w}: RuntimeError: {str(exc).splitlines()[0]}"
    return f"{spec.ours} at width {w}: ran without error"


@dataclass(frozen=True)
class ReadmeCheck:
    model: str
    points: int
    skipped: int
    div8_within_1m: int
    div1_within_1m: int
    ours_equal_div8: int
    worst_div1: str


def readme_table(ref: Reference, title: str) -> tuple[list[tuple[float, int, float]], int]:
    """MutualNet README's query table for ``title`` ("MobileNet v1"): (w, r, MFLOPs) rows with
    a pixel resolution, and how many rows were skipped (resolution given as a ratio)."""
    from benchmarks.peer._refs import ref_path

    lines = (ref_path(ref.name) / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title + ":"))
    flops = next(line for line in lines[start:] if line.startswith("|MFLOPs|")
                 or line.startswith("|MLOPs|"))
    wr = next(line for line in lines[start:] if line.startswith("|Width-Reso|"))
    values = [c for c in flops.strip("|").split("|")[1:]]
    pairs = [c for c in wr.strip("|").split("|")[1:]]
    rows, skipped = [], 0
    for v, p in zip(values, pairs, strict=True):
        w, r = p.split("-")
        if "." in r:
            skipped += 1       # "1.0-0.95": a resolution ratio, not a pixel size
            continue
        rows.append((float(w), int(r), float(v)))
    return rows, skipped


def check_readme(spec: PairSpec, title: str) -> ReadmeCheck:
    """Does the README's FLOPs table follow divisor 8 (HEAD) or divisor 1 (5ad661a)?"""
    probe = load_ref(spec, [1.0], extra=["utils.model_profiling", "models.slimmable_ops"])
    rows, skipped = readme_table(probe, title)
    ref = load_ref(spec, [w for w, _, _ in rows],
                   extra=["utils.model_profiling", "models.slimmable_ops"])
    m8 = build_theirs(ref, spec)
    with divisor(ref, 1):
        m1 = build_theirs(ref, spec)
    ours = build_ours(spec)
    n8 = n1 = same = 0
    worst = (0.0, "")
    for w, r, v in rows:
        t8 = profile(ref, m8, w, r)[0] / 1e6
        with divisor(ref, 1):
            t1 = profile(ref, m1, w, r)[0] / 1e6
        n8 += abs(t8 - v) < 1.0
        n1 += abs(t1 - v) < 1.0
        same += count(ours, w, r).macs == round(t8 * 1e6)
        if abs(t1 - v) > worst[0]:
            worst = (abs(t1 - v), f"{w}-{r}: README {v:g}M, divisor 8 {t8:.1f}M, "
                                  f"divisor 1 {t1:.1f}M")
    return ReadmeCheck(spec.ours, len(rows), skipped, n8, n1, same, worst[1])


def _m(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:,.2f}M" if n < 1e9 else f"{n / 1e9:,.4f}G"


def report(rows: list[Row], crash: list[str], readme: list[ReadmeCheck]) -> str:
    table = markdown_table(
        ["model (original)", "w", "r", "their profiler MACs", "ours (flops.count)",
         "difference", "theirs, divisor 1 (b155755 reverted)", "their params",
         "our params (conv+linear / +BN affine)"],
        [[r.spec.label, r.width, r.resolution, _m(r.their_macs), _m(r.our_macs), r.why,
          _m(r.div1_macs) if r.div1_macs is not None else "n/a (US-Nets)",
          f"{r.their_params:,}", f"{r.our_conv_linear_params:,} / {r.our_params:,}"]
         for r in rows])
    wr = max((r for r in rows if r.div1_macs is not None),
             key=lambda r: abs(r.div1_macs - r.their_macs) / r.their_macs,  # type: ignore[operator]
             default=None)
    unexplained = [r for r in rows if r.why.startswith("UNEXPLAINED")]
    notes = [
        f"References: {commits_line()}.",
        "",
        table,
        "",
        "What the differences are:",
        "",
        "- **MACs**: their profiler hooks every module and counts conv "
        "`Cin x Cout x k x k x H x W / groups`, linear `in x out`, and (Adaptive)AvgPool2d "
        "`C x H x W`, from the tensors of a real forward; ours computes the same terms from "
        "the channel plan without running the model. "
        + ("Every row agrees except as the difference column says." if not unexplained
           else f"**{len(unexplained)} rows are unexplained.**"),
        "- **The divisor defect** (SPEC section 6): MutualNet's commit 5ad661a (2020-07-10) "
        "set `make_divisible(divisor=1)` while its released weights and the README's "
        "FLOPs table use 8; b155755 (2020-07-15, MutualNet issue #3) set it back to 8. "
        "Code with divisor 1 builds and counts different channels ("
        + (f"largest gap here: {wr.spec.ours} {wr.width}-{wr.resolution}, "
           f"{_m(wr.div1_macs)} vs {_m(wr.their_macs)}" if wr is not None else "not run")
        + "), and the per-width "
        "BatchNorm holders, sized when the model is built, then no longer match the "
        f"channels the forward computes: {crash[0] if crash else 'not run'}. Ours has one "
        "`DIVISOR = 8` used by the layers and by `flops.count` through the same channel "
        "plan, so they cannot disagree (the equivalence section checks the channels).",
        "- **The README's query table** (MFLOPs per width-resolution, rounded to 1M) "
        "follows divisor 8: "
        + "; ".join(f"{c.model}: {c.div8_within_1m}/{c.points} rows within 1M with "
                    f"divisor 8, {c.div1_within_1m}/{c.points} with divisor 1 (worst: "
                    f"{c.worst_div1}); ours equals their divisor-8 count on "
                    f"{c.ours_equal_div8}/{c.points}"
                    + (f" ({c.skipped} rows with a resolution ratio skipped)"
                       if c.skipped else "") for c in readme)
        + ".",
        "- **Parameters**: their profiler sums `module.parameters()` of each conv / linear, "
        "i.e. the allocated (maximum-width) tensors at every width, and skips BatchNorm; ours "
        "counts the active slices, with the BN affine after the slash. At the maximum width "
        "their number equals our conv+linear count.",
    ]
    return "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-record", action="store_true", help="print only, leave BENCHMARKS.md")
    args = ap.parse_args(argv)
    rows: list[Row] = []
    crash: list[str] = []
    for spec in PAIRS:
        msg = missing_message([spec.ref])
        if msg:
            print(msg)
            continue
        new = run_spec(spec, crash)
        for r in new:
            print(f"{spec.label} {r.width}-{r.resolution}: theirs {human(r.their_macs)} "
                  f"ours {human(r.our_macs)} ({r.why})", flush=True)
        rows += new
    if not rows:
        return 0
    readme = []
    if missing_message(["MutualNet"]) is None:
        readme = [check_readme(find_pair("mobilenet_v1"), "MobileNet v1"),
                  check_readme(find_pair("mobilenet_v2"), "MobileNet v2")]
        for c in readme:
            print(c, flush=True)
    body = report(rows, crash, readme)
    if args.no_record:
        print(body)
    else:
        write_section("peer_flops", "Against the original implementations: FLOPs", body,
                      "python benchmarks/peer/flops.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
