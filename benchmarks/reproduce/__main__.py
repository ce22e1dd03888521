"""The CIFAR-10 study of MutualNet's claims (issue 15): one command per run, resumable.

    python -m benchmarks.reproduce status                      # done / partial / missing
    python -m benchmarks.reproduce run mutual-s0               # one run (resumes)
    python -m benchmarks.reproduce run all                     # every run not done yet
    python -m benchmarks.reproduce report --publish            # table, plot, claims
    python -m benchmarks.reproduce probe --steps 40            # s/step -> minutes per run
    python -m benchmarks.reproduce --scale smoke run all       # a few steps, bundled data

Scales: smoke (bundled subset, seconds), cpu (the study, full CIFAR-10), gpu (a larger
model, one seed; benchmarks/gpu_check.py). docs/reproduce.md has the design.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from export.errors import ExportError
from mutualnet.errors import MutualNetError, UsageError

from .runs import Paths, run_one, study_status
from .settings import DEFAULT_DATA, SCALES, Scale, find_run, plan_runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reproduce",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a scale setting (e.g. epochs=2); results of other settings "
                        "are reported as stale")
    p.add_argument("--out", type=Path, help="run directories (default runs/cifar_study)")
    p.add_argument("--results", type=Path, help="results files (default "
                   "benchmarks/results/cifar_study[_SCALE]; smoke: under --out)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train + evaluate runs (resuming), write results files")
    r.add_argument("runs", nargs="+", help="run keys such as mutual-s0, or 'all'")
    r.add_argument("--data", type=Path, help=f"CIFAR-10 npz (default {DEFAULT_DATA})")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    r.add_argument("--force", action="store_true", help="retrain even a finished run")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("status", help="list the runs: done, partial, stale or missing")
    rep = sub.add_parser("report", help="table, plot and claims from the results files")
    rep.add_argument("--dest", type=Path, help="where cifar_study.{md,png} go "
                     "(default OUT/SCALE/report)")
    rep.add_argument("--publish", action="store_true", help="also write docs/, BENCHMARKS.md "
                     "and (cpu scale) the README")
    rep.add_argument("--docs", type=Path, help="where --publish puts the PNG (default docs/)")
    rep.add_argument("--benchmarks", type=Path, help="BENCHMARKS.md to write (default the "
                     "repository's)")
    pr = sub.add_parser("probe", help="time N training steps per method, project run times")
    pr.add_argument("--steps", type=int, default=40)
    pr.add_argument("--data", type=Path)
    pr.add_argument("--threads", type=int)
    return p


def parse_set(items: Sequence[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, got {item!r}")
        vals = [yaml.safe_load(v) for v in raw.split(",")]
        out[key.strip()] = tuple(vals) if "," in raw else vals[0]
    return out


def resolve_data(scale: Scale, data: Path | None) -> Path | None:
    if scale.bundled:
        return None
    path = (data or DEFAULT_DATA).expanduser()
    if not path.is_file():
        raise UsageError(f"the CIFAR-10 npz {path} does not exist; pass --data PATH (format: "
                         "../shared/data/README.md; a subset: python -m "
                         "mutualnet.data.make_bundled SRC --out DST --train-per-class N)")
    return path


def cmd_run(args: argparse.Namespace, scale: Scale, paths: Paths, command: str) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = resolve_data(scale, args.data)
    specs = (plan_runs(scale) if args.runs == ["all"]
             else [find_run(scale, k) for k in args.runs])
    for spec in specs:
        doc = run_one(spec, scale, paths, data=data, device=args.device, command=command,
                      progress=not args.quiet, force=args.force)
        best = max(doc["points"], key=lambda p: p["top1"])
        print(f"{spec.key}: done in {doc['wall_s'] / 60:.1f} min, best top-1 "
              f"{best['top1']:.2f}% (w{best['width']:.2f}-r{best['resolution']}) -> "
              f"{paths.result_file(spec)}", flush=True)
    return 0


def cmd_status(scale: Scale, paths: Paths) -> int:
    rows = study_status(scale, paths)
    for st in rows:
        print(f"{st.spec.key:<22} {st.state:<8} {st.detail}")
    counts = {s: sum(r.state == s for r in rows) for s in ("done", "partial", "stale", "missing")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(rows)} runs "
          f"(results: {paths.results})")
    return 0


def cmd_report(args: argparse.Namespace, scale: Scale, paths: Paths, command: str) -> int:
    from .report import claims, publish, write_report
    from .study import load_study

    loaded = load_study(scale, paths)
    if args.publish and scale.name == "smoke":
        raise UsageError("a smoke study publishes nothing: drop --publish (or use --scale cpu)")
    written = write_report(loaded, args.dest or paths.out / scale.name / "report")
    print("\n".join(claims(loaded)))
    print(f"wrote {written.md} and {written.png}")
    if args.publish:
        png = publish(loaded, command, benchmarks=args.benchmarks,
                      **({"docs": args.docs} if args.docs else {}))
        print(f"published {png}, BENCHMARKS.md" + (", README.md" if scale.name == "cpu" else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "python -m benchmarks.reproduce " + shlex.join(argv)
    try:
        scale = SCALES[args.scale].replace(**parse_set(args.set))
        paths = Paths.default(scale, args.out, args.results)
        if args.command == "run":
            return cmd_run(args, scale, paths, command)
        if args.command == "status":
            return cmd_status(scale, paths)
        if args.command == "report":
            return cmd_report(args, scale, paths, command)
        from .probe import probe

        return probe(scale, resolve_data(scale, args.data), args.steps, args.threads)
    except (MutualNetError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        print("interrupted; the same command resumes from the last finished epoch",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
