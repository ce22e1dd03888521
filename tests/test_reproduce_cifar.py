"""benchmarks/reproduce (the CIFAR study, issue 15): run matrix, status, verdicts, report,
and the smoke study end to end (run -> status -> report, resume)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.reproduce import report, runs, settings, study  # noqa: E402
from benchmarks.reproduce.__main__ import main  # noqa: E402
from mutualnet.errors import UsageError  # noqa: E402
from mutualnet.evaluate import GridPoint  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMOKE = settings.SCALES["smoke"]


# --------------------------------------------------------------------------- settings
def test_run_matrix_and_keys():
    specs = settings.plan_runs(settings.SCALES["cpu"])
    assert [s.key for s in specs[:5]] == ["mutual-s0", "us_net-s0", "independent-w1.00-s0",
                                          "independent-w0.50-s0", "independent-w0.25-s0"]
    assert [s.seed for s in specs] == [0] * 5 + [1] * 5
    assert settings.find_run(SMOKE, "independent-w0.50-s1").width_range == (0.5, 0.5)
    with pytest.raises(UsageError, match="unknown run 'mutal-s0'.*mutual-s0"):
        settings.find_run(SMOKE, "mutal-s0")


def test_configs_differ_only_in_method_width_and_seed(tmp_path):
    """Same data, epochs, batch, schedule, augmentation, resolutions for every run."""
    scale = settings.SCALES["cpu"]
    shared: dict = {}
    for spec in settings.plan_runs(scale):
        c = settings.run_config(spec, scale, tmp_path / spec.key, tmp_path / "c.npz", "cpu")
        d = c.to_dict()
        for k in ("method", "width_mult_range", "log_dir", "random_seed", "independent_width"):
            d.pop(k)
        shared = shared or d
        assert d == shared, spec.key
        assert c.method == spec.method and tuple(c.width_mult_range) == spec.width_range
        assert c.resolved_transforms == "cifar" and c.base_resolution == 32
    assert shared["dataset"] == "npz" and shared["num_epochs"] == scale.epochs
    assert shared["max_train_images"] is None and shared["max_val_images"] is None


@pytest.mark.parametrize("name, macs", [("cpu", 1.064e6), ("gpu", 392.6e6)])
def test_scale_models_build(name, macs, tmp_path):
    from mutualnet.checkpoint import build_model
    from mutualnet.config import config_from_dict
    from mutualnet.flops import count

    scale = settings.SCALES[name]
    spec = settings.plan_runs(scale)[0]
    c = config_from_dict(settings.run_config(spec, scale, tmp_path, tmp_path / "c.npz",
                                             "cpu").to_dict())
    with torch.device("meta"):
        model = build_model(c)
    assert count(model, 1.0, 32).macs == pytest.approx(macs, rel=1e-3)


def test_scale_replace_and_set_reject_bad_keys():
    assert SMOKE.replace(epochs=2).epochs == 2
    assert SMOKE.replace(seeds=3).seeds == (3,)  # --set seeds=3
    with pytest.raises(UsageError, match="unknown scale key 'epoch'"):
        SMOKE.replace(epoch=2)
    with pytest.raises(UsageError, match="epochs must be at least 1"):
        SMOKE.replace(epochs=0)
    with pytest.raises(UsageError, match="seeds must be distinct"):
        SMOKE.replace(seeds=(1, 1))


# --------------------------------------------------------------------------- verdicts
def _pt(w: float, r: int, macs_k: int, top1: float) -> GridPoint:
    return GridPoint(w, r, macs_k * 1000, 1000, top1, min(100.0, top1 + 10), 100)


GRID = {(1.0, 32): 1000, (1.0, 20): 400, (0.5, 32): 300, (0.5, 20): 120, (0.25, 32): 100,
        (0.25, 20): 40}


def _write_study(paths: runs.Paths, scale, offsets: dict[str, float], jitter: float,
                 skip: tuple[str, ...] = ()) -> None:
    """Fake results files: top-1 = 50 + 40 * MACs/1e6 + method offset +- jitter per seed."""
    for spec in settings.plan_runs(scale):
        if spec.key in skip:
            continue
        off = offsets[spec.group] + (jitter if spec.seed else -jitter)
        pts = [_pt(w, r, m, 50 + 40 * m / 1000 + off) for (w, r), m in GRID.items()
               if w in spec.eval_widths]
        runs.write_json(paths.result_file(spec), {
            "format": runs.FORMAT, "settings": scale.fairness(), "wall_s": 60.0,
            "train_wall_s": 50.0, "epochs": 1, "steps": 3, "command": "cmd", "sessions": [],
            "points": [dataclasses.asdict(p) for p in pts]})


SCALE = SMOKE.replace(grid_widths=(0.25, 0.5, 1.0), seeds=(0, 1))


@pytest.mark.parametrize("offsets, jitter, words", [
    ({"MutualNet": 2.0, "US-Net": 1.0, "Independent": 0.0}, 0.1, ["holds"] * 3),
    ({"MutualNet": 1.0, "US-Net": 2.0, "Independent": 0.0}, 0.1,
     ["does not hold", "holds", "holds"]),
    ({"MutualNet": 0.2, "US-Net": 0.1, "Independent": 0.0}, 0.5, ["within noise"] * 3),
])
def test_claims_follow_the_seed_spread(tmp_path, offsets, jitter, words):
    paths = runs.Paths(tmp_path, tmp_path / "res")
    _write_study(paths, SCALE, offsets, jitter)
    sentences = report.claims(study.load_study(SCALE, paths))
    for sentence, word in zip(sentences, words, strict=True):
        assert f": {word}" in sentence, sentence


def test_budget_rule_picks_best_affordable_point():
    pts = [_pt(1.0, 32, 1000, 60.0), _pt(0.5, 32, 300, 55.0), _pt(1.0, 20, 290, 56.0)]
    best = study.best_within(pts, 300_000)
    assert best is not None and best.id == "w1.00-r20"
    assert study.best_within(pts, 1000) is None


def test_report_marks_missing_runs_and_incomplete_groups(tmp_path):
    paths = runs.Paths(tmp_path, tmp_path / "res")
    _write_study(paths, SCALE, {"MutualNet": 2.0, "US-Net": 1.0, "Independent": 0.0}, 0.1,
                 skip=("us_net-s0", "us_net-s1", "independent-w0.50-s1"))
    loaded = study.load_study(SCALE, paths)
    assert [s.key for s in loaded.missing] == ["us_net-s0", "us_net-s1",
                                               "independent-w0.50-s1"]
    assert sorted(loaded.per_group["Independent"]) == [0]  # seed 1 lacks a width
    text = report.study_markdown(loaded, "p.png")
    assert "Missing runs (no current results file): us_net-s0" in text
    assert "| missing |" in text and "not measured yet" in text
    assert "one seed" in report.claims(loaded)[2]
    states = {s.spec.key: s.state for s in runs.study_status(SCALE, paths)}
    assert states["mutual-s0"] == "done" and states["us_net-s0"] == "missing"
    assert runs.run_status(settings.plan_runs(SCALE)[0], SCALE.replace(epochs=2),
                           paths).state == "stale"


# --------------------------------------------------------------------------- smoke study
def _argv(tmp_path: Path, *rest: str) -> list[str]:
    return ["--scale", "smoke", "--out", str(tmp_path / "o"), *rest]


def test_smoke_study_run_status_report_and_resume(tmp_path, capsys):
    seed0 = [s.key for s in settings.plan_runs(SMOKE, (0,))]
    assert main(_argv(tmp_path, "run", *seed0, "--quiet")) == 0
    res = tmp_path / "o" / "smoke" / "results"
    doc = json.loads((res / "mutual-s0.json").read_text())
    assert len(doc["points"]) == 2 * 4 and doc["steps"] == 3 and doc["wall_s"] > 0
    assert doc["command"].startswith("python -m benchmarks.reproduce --scale smoke")
    assert len(json.loads((res / "independent-w0.25-s0.json").read_text())["points"]) == 4

    capsys.readouterr()
    assert main(_argv(tmp_path, "status")) == 0
    out = capsys.readouterr().out
    assert "5 done, 0 partial, 0 stale, 5 missing of 10 runs" in out

    # a session stopped after training, before the results file: evaluated, not retrained
    run_dir = tmp_path / "o" / "smoke" / "mutual-s0"
    mtime = (run_dir / "checkpoint.safetensors").stat().st_mtime_ns
    (res / "mutual-s0.json").unlink()
    assert main(_argv(tmp_path, "status")) == 0
    assert "trained, not evaluated epoch 1/1" in capsys.readouterr().out
    assert main(_argv(tmp_path, "run", "mutual-s0", "--quiet")) == 0
    assert (run_dir / "checkpoint.safetensors").stat().st_mtime_ns == mtime
    assert (res / "mutual-s0.json").is_file()

    capsys.readouterr()
    assert main(_argv(tmp_path, "report")) == 0
    out = capsys.readouterr().out
    assert "MutualNet beats US-Net" in out and "one seed" in out
    rep = tmp_path / "o" / "smoke" / "report"
    assert (rep / "cifar_study.png").read_bytes().startswith(PNG_MAGIC)
    assert "Missing runs (no current results file): mutual-s1" in (
        rep / "cifar_study.md").read_text()
    assert main(_argv(tmp_path, "report", "--publish")) == 2  # smoke publishes nothing


@pytest.mark.parametrize("argv, message", [
    (["run", "nope-s0"], "unknown run 'nope-s0'"),
    (["--set", "epoch=2", "status"], "unknown scale key 'epoch'"),
    (["--set", "epochs", "status"], "--set takes KEY=VALUE"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main(_argv(tmp_path, *argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_missing_data_says_how_to_get_it(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "run", "mutual-s0", "--data", str(tmp_path / "no.npz")]
    assert main(argv) == 2
    assert "pass --data PATH" in capsys.readouterr().err


def test_old_script_is_a_shim():
    import benchmarks.reproduce_cifar as shim

    assert shim.main is main


@pytest.mark.gpu
def test_smoke_run_on_gpu(tmp_path):
    """One smoke run trained and evaluated on CUDA (bf16, channels_last by default there)."""
    assert main(_argv(tmp_path, "run", "mutual-s0", "--device", "cuda", "--quiet")) == 0
    doc = json.loads((tmp_path / "o" / "smoke" / "results" / "mutual-s0.json").read_text())
    assert len(doc["points"]) == 8 and doc["steps"] == 3


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: every step on the CPU at toy size (188 s at load
    6.5 on 2 cores), figures into OUT/BENCHMARKS.md, not the repo's."""
    import subprocess

    from mutualnet.data import BUNDLED_NPZ

    before = (ROOT / "BENCHMARKS.md").read_text()
    out = tmp_path / "g"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--data", str(BUNDLED_NPZ), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    bench = (out / "BENCHMARKS.md").read_text()
    for key in ("gpu_check_tests", "step_vs_torchvision_dry", "cifar_study_gpu"):
        assert f"<!-- begin: {key} -->" in bench, key
    assert "MAC-throughput ratio" in bench and "MutualNet beats US-Net" in bench
    assert len(list((out / "results" / "cifar_study_gpu").glob("*-s0.json"))) == 5
    assert (out / "cifar_study_gpu.png").read_bytes().startswith(PNG_MAGIC)
    assert (ROOT / "BENCHMARKS.md").read_text() == before


def test_a_stopped_run_resumes_from_its_last_epoch(tmp_path, capsys):
    """A session ended after epoch 1 of 2: the same command continues at epoch 2."""
    from mutualnet.train import train

    scale = SMOKE.replace(epochs=2)
    spec = settings.find_run(scale, "independent-w0.25-s0")
    paths = runs.Paths.default(scale, tmp_path / "o")
    run_dir = paths.run_dir(scale, spec)
    config = settings.run_config(spec, scale, run_dir, None, "cpu")
    train(config, run_dir, stop_after_epochs=1, progress=False)
    assert runs.run_status(spec, scale, paths).detail.startswith("resumes at epoch 1/2")
    assert main(_argv(tmp_path, "--set", "epochs=2", "run", spec.key, "--quiet")) == 0
    doc = json.loads(paths.result_file(spec).read_text())
    assert doc["epochs"] == 2 and doc["steps"] == 6
    assert [s["resumed_at_epoch"] for s in doc["sessions"]] == [1]


def test_publish_writes_png_benchmarks_and_readme_sections(tmp_path):
    scale = settings.SCALES["cpu"]
    paths = runs.Paths(tmp_path, tmp_path / "res")
    _write_study(paths, scale, {"MutualNet": 2.0, "US-Net": 1.0, "Independent": 0.0}, 0.1)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- begin: cifar_study -->\nPLACEHOLDER\n<!-- end: cifar_study -->\n\nend\n")
    bench = tmp_path / "B.md"
    png = report.publish(study.load_study(scale, paths), "python -m benchmarks.reproduce "
                         "report --publish", benchmarks=bench, docs=tmp_path, readme=readme)
    assert png == tmp_path / "cifar_study.png" and png.read_bytes().startswith(PNG_MAGIC)
    text = readme.read_text()
    assert "PLACEHOLDER" not in text and text.endswith("end\n") and "All planned runs are in." in text
    assert "MutualNet beats US-Net at every MACs budget: holds" in text
    assert "<!-- begin: cifar_study -->" in bench.read_text() and "| mutual-s0 | 1.0" in (
        bench.read_text())
