"""Do MACs rank MobileNet v1 subnets the way measured latency does? And what would
``mutualnet export --auto 4`` ship, against the same choice made on MACs?

The registry's ``mobilenet_v1`` supernet (random init: latency does not depend on the
weights) sliced at widths {0.25, 0.5, 0.75, 1.0} x resolutions {128, 160, 192, 224},
exported to ONNX exactly as ``mutualnet export`` does, and timed with ONNX Runtime on the
CPU by ``export.latency.measure`` (``mutualnet profile``'s method: 200 ms warm-up, then
``--seconds`` of timed runs; p50 / p90; the load average recorded) at batch 1.

Reported: measured latency per candidate; the MACs order against the measured order (the
pairs MACs rank the other way round, out of all pairs, and which; pairs of equal latency by
``export.autoselect.same_latency`` are counted apart); the 4 points ``export.autoselect
.select`` chooses on measured latency, and the 4 it chooses when MACs stand in for latency.

Accuracy: no trained MobileNet v1 supernet exists here, so the accuracy axis is the
**published** ImageNet top-1 of the 16 TF-slim MobileNet v1 models (tensorflow/models,
research/slim/nets/mobilenet_v1.md, checkpoints mobilenet_v1_2018_02_22; not measured here).

    python benchmarks/latency_rank.py [--seconds 2] [--threads 1]   # writes BENCHMARKS.md
    python benchmarks/latency_rank.py --quick                       # 2 x 2 grid, prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import markdown_table, write_section  # noqa: E402
from export.autoselect import (  # noqa: E402
    LatencyTable,
    Measured,
    Selection,
    measured,
    same_latency,
    select,
)
from export.backends.onnxruntime import OrtRunner  # noqa: E402
from export.latency import load_average, measure  # noqa: E402
from export.manifest import subnet_id  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.slicing import slice_subnet  # noqa: E402
from mutualnet.flops import count  # noqa: E402
from mutualnet.models import create_model  # noqa: E402

WIDTHS = (0.25, 0.5, 0.75, 1.0)
RESOLUTIONS = (128, 160, 192, 224)
#: Published ImageNet top-1 (%) of the TF-slim MobileNet v1 float models (not measured here).
PUBLISHED_TOP1 = {
    (1.0, 224): 70.9, (1.0, 192): 70.0, (1.0, 160): 68.0, (1.0, 128): 65.2,
    (0.75, 224): 68.4, (0.75, 192): 67.2, (0.75, 160): 65.3, (0.75, 128): 62.1,
    (0.5, 224): 63.3, (0.5, 192): 61.7, (0.5, 160): 59.1, (0.5, 128): 56.3,
    (0.25, 224): 49.8, (0.25, 192): 47.7, (0.25, 160): 45.5, (0.25, 128): 41.5,
}
SOURCE = ("published ImageNet top-1 of the TF-slim models (tensorflow/models "
          "research/slim/nets/mobilenet_v1.md, mobilenet_v1_2018_02_22), not measured here")


def measure_grid(widths: Sequence[float], resolutions: Sequence[int], seconds: float,
                 threads: int) -> LatencyTable:
    """Export and time every (width, resolution) at batch 1."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v1", num_classes=1000).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, r in itertools.product(widths, resolutions):
            sliced = slice_subnet(model, w, r)
            path = export_onnx(sliced.module, r, Path(tmp) / f"{subnet_id(w, r)}.onnx").path
            runner = OrtRunner(path, threads=threads)
            x = np.random.default_rng(0).standard_normal((1, 3, r, r)).astype(np.float32)
            stats = measure(functools.partial(runner.run, x), subnet_id=subnet_id(w, r),
                            batch=1, duration_s=seconds)
            runner.close()
            rows.append(measured(w, r, macs=count(model, w, r).macs,
                                 accuracy=PUBLISHED_TOP1[(w, r)], p50_ms=stats.p50_ms,
                                 p90_ms=stats.p90_ms, runs=stats.runs, device="this CPU",
                                 load=stats.load))
            print(f"{rows[-1].label}: p50 {stats.p50_ms:.3f} ms, p90 {stats.p90_ms:.3f} ms, "
                  f"{stats.runs} runs, load {stats.load}", flush=True)
    return LatencyTable("mobilenet_v1", "none (random init)", tuple(rows), "", os.cpu_count())


def misranked(rows: Sequence[Measured]) -> tuple[list[str], list[str]]:
    """(pairs MACs order the other way round from measured p50, pairs of equal latency)."""
    wrong, equal = [], []
    for a, b in itertools.combinations(sorted(rows, key=lambda m: m.candidate.macs), 2):
        pair = f"{a.label} / {b.label}"
        if same_latency(a, b):
            equal.append(pair)
        elif a.p50_ms > b.p50_ms and a.candidate.macs < b.candidate.macs:
            wrong.append(f"{pair} ({a.candidate.mmacs:.0f} < {b.candidate.mmacs:.0f} M MACs, "
                         f"{a.p50_ms:.2f} > {b.p50_ms:.2f} ms)")
    return wrong, equal


def macs_as_latency(table: LatencyTable) -> LatencyTable:
    """The same table with millions of MACs in place of latency (no spread): what the
    selection would do if MACs were the latency."""
    rows = tuple(dataclasses.replace(m, p50_ms=m.candidate.mmacs, p90_ms=m.candidate.mmacs,
                                     load=None) for m in table.rows)
    return dataclasses.replace(table, rows=rows)


def report(table: LatencyTable, n: int) -> str:
    by_latency = select(table, n)
    by_macs = select(macs_as_latency(table), n)
    front = {m.key for m in by_latency.front}
    rows = [[m.label, f"{m.candidate.mmacs:.1f}", f"{m.candidate.accuracy:.1f}",
             f"{m.p50_ms:.3f}", f"{m.p90_ms:.3f}", m.runs,
             "-" if m.load is None else f"{m.load:.1f}", "yes" if m.key in front else ""]
            for m in sorted(table.rows, key=lambda m: m.candidate.macs)]
    wrong, equal = misranked(table.rows)
    pairs = len(table.rows) * (len(table.rows) - 1) // 2
    lat = {m.key: m for m in table.rows}

    def chosen(sel: Selection) -> str:
        return ", ".join(f"{m.label} ({lat[m.key].p50_ms:.2f} ms, {m.candidate.accuracy:.1f}%)"
                         for m in sel.chosen)

    notes = "".join(f"\n- {x}" for x in by_latency.notes)
    return (f"Accuracy: {SOURCE}.\n\n"
            + markdown_table(["candidate", "M MACs", "top-1 (published)", "p50 ms", "p90 ms",
                              "runs", "load", "latency front"], rows)
            + f"\n\nMACs rank {len(wrong)} of {pairs} pairs the other way round from measured "
            f"p50 ({len(equal)} more pairs are of equal latency by the `--auto` rule and not "
            "counted):\n" + "".join(f"\n- {w}" for w in wrong)
            + f"\n\n`--auto {n}` (measured latency) ships: {chosen(by_latency)}.\n\n"
            f"The same selection on MACs ships: {chosen(by_macs)}.\n"
            + (f"\nSelection notes:{notes}\n" if notes else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per candidate")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--auto", type=int, default=4, help="points to choose")
    ap.add_argument("--quick", action="store_true",
                    help="widths 0.25,1.0 x resolutions 128,224, 0.1 s each; prints only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = load_average()
    seconds = 0.1 if args.quick else args.seconds
    widths, resolutions = ((0.25, 1.0), (128, 224)) if args.quick else (WIDTHS, RESOLUTIONS)
    table = measure_grid(widths, resolutions, seconds, args.threads)
    body = (f"ONNX Runtime CPU provider, {args.threads} intra-op thread, batch 1, "
            f"{seconds:g} s per candidate; load average {load} at the start, "
            f"{load_average()} at the end, on {os.cpu_count()} cores.\n\n"
            + report(table, args.auto))
    if args.quick:
        print(body)
        return
    cmd = "python benchmarks/latency_rank.py " + " ".join(sys.argv[1:])
    write_section("latency_rank", "Subnets by measured latency vs by MACs (MobileNet v1)",
                  body, cmd.strip())


if __name__ == "__main__":
    main()
