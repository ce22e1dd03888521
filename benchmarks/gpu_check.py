"""The prepared GPU check (issue 15): one run, under 8 minutes on one GPU.

(a) the GPU-marked tests; (b) the training step vs a plain torchvision step (bf16,
channels_last, MAC-throughput ratio, goal >= 0.8); (c) the CIFAR study at the ``gpu``
scale (WRN-16-4, one seed), cut off at the time left so the check ends in budget (the
finished runs are reported, the others marked missing). Every figure goes into
``OUT/BENCHMARKS.md`` (a copy of the repository's, sections rewritten) and the study's
results files into ``OUT/results/cifar_study_gpu/`` (commit both). ``--dry-run``: the same
steps on the CPU at toy size (the tests skip, the figures are not GPU figures).

    bash benchmarks/gpu_check.sh --data PATH/cifar10_jpeg.npz --out "$OUT"
    python benchmarks/gpu_check.py --dry-run --data mutualnet/data/bundled/cifar10_subset.npz \\
        --out /tmp/gpu_dry
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 470
STUDY = "python -m benchmarks.reproduce"
TOY_STUDY = ["--set", "model=tiny_mobilenet", "--set", "epochs=1", "--set", "batch_size=32",
             "--set", "train_images=64", "--set", "val_images=64", "--set", "calib_images=32",
             "--set", "grid_widths=0.25,1.0"]


def sh(cmd: list[str], timeout: float, log: Path) -> tuple[int, float, str]:
    """Run ``cmd`` in the repository root with a time limit; (exit code, seconds, tail)."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    print(f"[{time.monotonic() - t0:5.0f} s] rc {rc}: {' '.join(cmd)}\n    {tail[0]}",
          flush=True)
    return rc, time.monotonic() - t0, tail[0]


def tests_step(out: Path, bench: Path, left: float) -> None:
    from benchmarks._report import write_section

    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"]
    rc, secs, tail = sh(cmd, min(120, left), out / "gpu_tests.log")
    verdict = "timed out" if rc == 124 else ("passed" if rc == 0 else f"exit code {rc}")
    write_section("gpu_check_tests", "GPU check: GPU-marked tests",
                  f"{verdict} in {secs:.0f} s: `{tail}` (log: gpu_tests.log)",
                  "python " + " ".join(cmd[1:]), path=bench)


def step_bench(out: Path, bench: Path, left: float, dry: bool) -> None:
    args = (["--device", "cpu", "--fp32", "--batch", "2", "--steps", "1", "--rounds", "1",
             "--models", "mobilenet_v2", "--resolutions", "64,56,48,40"] if dry else
            ["--device", "cuda", "--batch", "256", "--steps", "10", "--rounds", "3",
             "--models", "mobilenet_v2,resnet50"])
    cmd = [sys.executable, "benchmarks/step_vs_torchvision.py", *args, "--benchmarks",
           str(bench)]
    sh(cmd, min(150, left), out / "step_vs_torchvision.log")


def study_step(out: Path, bench: Path, data: Path, left: float, dry: bool) -> None:
    base = [sys.executable, "-m", "benchmarks.reproduce", "--scale", "gpu",
            *(TOY_STUDY if dry else []), "--out", str(out / "runs"),
            "--results", str(out / "results" / "cifar_study_gpu")]
    device = "cpu" if dry else "cuda"
    sh([*base, "run", "all", "--data", str(data), "--device", device, "--quiet"],
       left - 45, out / "study_run.log")
    sh([*base, "status"], 30, out / "study_status.log")
    sh([*base, "report", "--publish", "--benchmarks", str(bench), "--docs", str(out),
        "--dest", str(out / "report")], 40, out / "study_report.log")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="cifar10_jpeg.npz (or a subset "
                    "made by python -m mutualnet.data.make_bundled)")
    ap.add_argument("--out", type=Path, required=True, help="where figures and logs go")
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S)
    args = ap.parse_args(argv)
    if not args.data.is_file():
        print(f"error: {args.data} does not exist; pass --data PATH to cifar10_jpeg.npz",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    bench = args.out / "BENCHMARKS.md"
    shutil.copyfile(ROOT / "BENCHMARKS.md", bench)

    def left() -> float:
        return args.budget_s - (time.monotonic() - t0)

    tests_step(args.out, bench, left())
    step_bench(args.out, bench, left(), args.dry_run)
    study_step(args.out, bench, args.data.resolve(), left(), args.dry_run)
    print(f"gpu_check: {time.monotonic() - t0:.0f} s; figures in {bench}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
