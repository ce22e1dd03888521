"""benchmarks/reproduce_cifar.py: run plan, tables, claims, plots, GPU rows, CLI, smoke sweep."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchmarks.reproduce_cifar as rc  # noqa: E402
from mutualnet.errors import UsageError  # noqa: E402
from mutualnet.evaluate import GridPoint  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _settings(**changes) -> rc.Settings:
    args = rc.build_parser().parse_args(["--smoke", "--quiet"])
    return dataclasses.replace(rc.settings_from_args(args), **changes)


# --------------------------------------------------------------------------- run plan
def test_parse_methods_aliases_order_and_errors():
    assert rc.parse_methods("all") == rc.METHODS
    assert rc.parse_methods("wide_mutual,mutual,mutual") == ("mutual", "wide_mutual")
    assert rc.parse_methods("claim_b") == ("wide_plain", "wide_mutual")
    with pytest.raises(UsageError, match="unknown method 'sandwich'"):
        rc.parse_methods("mutual,sandwich")
    with pytest.raises(UsageError, match="at least one"):
        rc.parse_methods(" , ")


def test_model_ref_parse_and_label():
    ref = rc.ModelRef.parse("wrn:depth=16,widen_factor=4")
    assert ref.name == "wrn" and ref.kw == {"depth": 16, "widen_factor": 4}
    assert ref.label == "WRN-16-4" and str(ref) == "wrn:depth=16,widen_factor=4"
    assert rc.ModelRef.parse("tiny_mobilenet").kw == {}
    with pytest.raises(UsageError, match="key=value"):
        rc.ModelRef.parse("wrn:depth16")
    with pytest.raises(UsageError, match="unknown model 'resnet18'"):
        rc.ModelRef.parse("resnet18")


def test_plan_runs_covers_every_method_per_seed():
    s = _settings(seeds=(0, 1), methods=rc.METHODS)
    runs = rc.plan_runs(s)
    names = [r.name for r in runs]
    assert names[:7] == ["mutual", "us_net", "independent-w1.00", "independent-w0.50",
                         "independent-w0.25", "wide_plain", "wide_mutual"]
    assert names[7:] == names[:7] and [r.seed for r in runs] == [0] * 7 + [1] * 7
    ind = {r.name: r for r in runs if r.group == "Independent"}
    assert ind["independent-w0.50"].overrides["width_mult_range"] == [0.5, 0.5]
    assert ind["independent-w0.50"].eval_widths == (0.5,)
    wide = next(r for r in runs if r.name == "wide_mutual")
    assert wide.overrides["width_mult_range"] == [0.9, 1.0] and wide.model == s.wide
    assert runs[0].dir(Path("/o")) == Path("/o/runs/mutual/seed0")


def test_run_configs_differ_only_in_method_and_width_range(tmp_path):
    """Same data, epochs, batch, schedule and augmentation for every run (the issue's rule)."""
    s = _settings(methods=rc.METHODS)
    shared: dict = {}
    for spec in rc.plan_runs(s):
        c = rc.run_config(spec, s, tmp_path / spec.name)
        d = c.to_dict()
        for k in ("method", "width_mult_range", "width_mult_list", "log_dir", "model",
                  "model_kwargs", "independent_width"):
            d.pop(k)
        shared = shared or d
        assert d == shared, spec.name
        assert c.method == spec.overrides["method"]
        assert c.resolution_list == rc.RESOLUTIONS and c.base_resolution == 32
        assert c.resolved_transforms == "cifar" and c.effective_lr == pytest.approx(0.025)
    assert shared["num_epochs"] == 1 and shared["dataset"] == "cifar10_bundled"


def test_full_sweep_configs_build_the_named_models(tmp_path):
    """The GPU sweep's WRN-16-4 / WRN-16-8 configs must build those networks (and survive the
    config round trip a checkpoint makes), not the registry's WRN-28-10."""
    from mutualnet.checkpoint import build_model
    from mutualnet.config import config_from_dict
    from mutualnet.flops import count

    s = _settings(backbone=rc.ModelRef.parse(rc.FULL["backbone"]),
                  wide=rc.ModelRef.parse(rc.FULL["wide"]), methods=rc.METHODS)
    want = {"mutual": 392.6e6, "independent-w0.25": 25.4e6, "wide_plain": 1.548e9}
    for spec in rc.plan_runs(s):
        if spec.name not in want:
            continue
        c = rc.run_config(spec, s, tmp_path)
        c = config_from_dict(c.to_dict())  # what load_checkpoint does
        assert (c.model, c.model_kwargs) == (spec.model.name, spec.model.kw), spec.name
        with torch.device("meta"):
            model = build_model(c)
        macs = count(model, c.max_width, 32).macs
        assert macs == pytest.approx(want[spec.name], rel=1e-3), spec.name


# --------------------------------------------------------------------------- tables
def _pt(w: float, r: int, macs_k: int, top1: float) -> GridPoint:
    return GridPoint(w, r, macs_k * 1000, 1000, top1, min(100.0, top1 + 10), 100)


def _result(name: str, group: str, seed: int, points, model="tiny_mobilenet",
            train=None) -> rc.RunResult:
    spec = rc.RunSpec(name, name, group, seed, rc.ModelRef(model), {}, ())
    return rc.RunResult(spec, Path(f"/runs/{name}/seed{seed}"), tuple(points), train or {})


def _claim_a_results(offsets=(2.0, 1.0, 0.0), seeds=(0, 1)):
    """Three methods on the same MAC grid; method i is `offsets[i]` points better."""
    grid = [(1.0, 32, 1000), (0.5, 32, 300), (0.25, 32, 100), (1.0, 20, 400),
            (0.5, 20, 120), (0.25, 20, 40)]
    base = {(w, r): 50 + 40 * m / 1000 for w, r, m in grid}
    out = []
    for seed in seeds:
        for (name, group), off in zip((("mutual", "MutualNet"), ("us_net", "US-Net")),
                                      offsets[:2], strict=True):
            out.append(_result(name, group, seed, [_pt(w, r, m, base[w, r] + off + seed * 0.2)
                                                    for w, r, m in grid]))
        for w in (1.0, 0.5, 0.25):
            out.append(_result(f"independent-w{w:.2f}", "Independent", seed,
                               [_pt(w, r, m, base[w, r] + offsets[2] + seed * 0.2)
                                for ww, r, m in grid if ww == w]))
    return out


def test_mean_points_average_over_seeds_on_common_points():
    a = [_pt(1.0, 32, 100, 50.0), _pt(0.5, 32, 40, 40.0)]
    b = [_pt(1.0, 32, 100, 54.0)]
    means = rc.mean_points({0: a, 1: b})
    assert [(p.width, p.top1) for p in means] == [(1.0, 52.0)]
    assert rc.mean_points({}) == []


def test_best_within_budget_picks_most_accurate_affordable_point():
    pts = [_pt(1.0, 32, 1000, 60.0), _pt(0.5, 32, 300, 55.0), _pt(1.0, 20, 290, 56.0)]
    best = rc.best_within(pts, 300_000)
    assert best is not None and best.id == "w1.00-r20"
    assert rc.best_within(pts, 290_000) == pts[2]
    assert rc.best_within(pts, 1000) is None


def test_claim_a_table_verdicts_follow_the_ordering():
    table, verdicts = rc.claim_a_table(_claim_a_results((2.0, 1.0, 0.0)))
    assert verdicts == [True] * 4, table
    assert "MutualNet > US-Net > Independent?" in table
    assert "w1.00 @ 32 px" in table and "w0.25 @ 20 px" in table
    # mean over seeds 0 and 1 (+0.2), both seeds listed, and the subnet used
    first = table.splitlines()[2]
    assert "(" in first and "/" in first and "[w1.00-r32]" in first
    _, verdicts = rc.claim_a_table(_claim_a_results((1.0, 2.0, 0.0)))
    assert verdicts == [False] * 4


def test_claim_b_table_compares_full_width():
    plain = _result("wide_plain", "Wide plain", 0, [_pt(1.0, 32, 5000, 90.0)], "wrn")
    mut = _result("wide_mutual", "Wide MutualNet", 0,
                  [_pt(1.0, 32, 5000, 91.5), _pt(0.9, 32, 4000, 91.0)], "wrn")
    table, holds = rc.claim_b_table([plain, mut])
    assert holds is True and "+1.50" in table
    _, holds = rc.claim_b_table([plain])
    assert holds is None
    worse = dataclasses.replace(mut, points=(_pt(1.0, 32, 5000, 89.0),))
    assert rc.claim_b_table([plain, worse])[1] is False


def test_export_pairs_thin_the_front_keeping_both_ends():
    pts = [_pt(1.0, r, m, a) for r, m, a in ((20, 10, 1.0), (22, 20, 2.0), (24, 30, 3.0),
                                              (26, 40, 4.0), (28, 50, 5.0), (32, 60, 6.0))]
    assert rc.export_pairs(pts, 3) == ((1.0, 20), (1.0, 24), (1.0, 32))
    assert rc.export_pairs(pts, 4) == ((1.0, 20), (1.0, 24), (1.0, 26), (1.0, 32))
    assert len(rc.export_pairs(pts, 10)) == 6
    assert rc.export_pairs(pts, 1) == ((1.0, 32),)
    assert rc.export_pairs(pts, 0) == ()


# --------------------------------------------------------------------------- GPU section
def _gpu_train(ips: float, mem_gib: float, macs: float, device="NVIDIA H100 80GB HBM3"):
    return {"cuda": True, "smoke": False, "images_per_s": ips, "batch_size": 128,
            "peak_memory_bytes": int(mem_gib * 2**30), "train_macs_per_image": macs,
            "device": device}


def test_gpu_rows_not_measured_without_a_gpu():
    rows, note = rc.gpu_rows([_result("mutual", "MutualNet", 0, [], train={"cuda": False}),
                              _result("us_net", "US-Net", 0, [],
                                      train={"cuda": True, "smoke": True})])
    assert rows[0][2:8] == ["not measured"] * 6 and rows[0][-1] == "trained on CPU"
    assert rows[1][-1] == "smoke run"
    assert "no run was measured on a GPU" in note


def test_gpu_rows_ratios_tflops_and_peak():
    res = [_result("independent-w1.00", "Independent", 0, [], train=_gpu_train(12800, 2, 1e9)),
           _result("mutual", "MutualNet", 0, [], train=_gpu_train(4000, 3, 2e9)),
           _result("mutual", "MutualNet", 1, [], train=_gpu_train(4000, 3.5, 2e9))]
    rows, note = rc.gpu_rows(res)
    by = {r[0]: r for r in rows}
    assert by["mutual"][2] == "4,000" and by["mutual"][3] == "32.0"  # 128 / 4000 s
    assert by["mutual"][4] == "3.20x independent-w1.00"  # 32 ms / 10 ms
    assert by["mutual"][5] == "3.50"  # max over seeds
    assert by["mutual"][6] == "48.0"  # 4000 * 2e9 * 6 / 1e12
    assert by["mutual"][7] == f"{100 * 48 / 989.5:.1f}%" and "989.5" in note
    assert by["independent-w1.00"][4] == "1 (single width)"
    pcie = rc.bf16_peak("NVIDIA H100 PCIe")
    assert pcie[0] == 756.5
    assert rc.bf16_peak("Some GPU")[0] is None and rc.bf16_peak("x", 100.0)[0] == 100.0
    text = rc.gpu_section(res, _settings())
    assert "| mutual |" in text and "bf16 dense peak used" in text


# --------------------------------------------------------------------------- plots
def _loss_history(r: rc.RunResult, base: float) -> rc.RunResult:
    metrics = tuple({"epoch": e, "loss": base / e} for e in (1, 2, 3))
    steps = tuple({"step": s, "loss": base / (1 + s / 4)} for s in range(1, 13))
    return dataclasses.replace(r, metrics=metrics, steps=steps,
                               train={"steps_per_epoch": 4})


def test_plots_write_pngs(tmp_path):
    res = _claim_a_results() + [
        _result("wide_plain", "Wide plain", 0, [_pt(1.0, 32, 5000, 90.0),
                                                _pt(1.0, 24, 2800, 88.0)], "wrn"),
        _result("wide_mutual", "Wide MutualNet", 0, [_pt(1.0, 32, 5000, 91.0)], "wrn")]
    res = [_loss_history(r, 2.0 + i / 10) for i, r in enumerate(res)]
    rc.plot_accuracy(res, tmp_path / "acc.png", title="t")
    rc.plot_losses(res, tmp_path / "loss.png")
    for name in ("acc.png", "loss.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    ep_x, ep_y, st_x, st_y = rc.loss_curve(res[0])
    assert ep_x == [0.5, 1.5, 2.5] and ep_y[0] == pytest.approx(2.0)
    assert st_x[0] == 0.25 and len(st_y) == 12
    with pytest.raises(UsageError, match="nothing to plot"):
        rc.plot_accuracy([], tmp_path / "none.png")
    assert not list(tmp_path.glob(".*tmp"))


def test_write_report_and_publish(tmp_path):
    res = [_loss_history(r, 2.0) for r in _claim_a_results(seeds=(0,))]
    s = _settings(methods=("mutual", "us_net", "independent"))
    paths = rc.write_report(res, s, tmp_path, "cmd", None, None)
    md = paths["md"].read_text()
    assert "Claim (a) holds at 4 of 4 budgets" in md and "Smoke run" in md
    assert "Claim (b) was not run" in md
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].startswith("run,group,model,seed,width,resolution,macs")
    assert len(rows) == 1 + 6 + 6 + 6
    doc = json.loads(paths["json"].read_text())
    assert doc["claim_a_holds_per_budget"] == [True] * 4 and len(doc["runs"]) == 5
    docs = tmp_path / "docs"
    written = rc.publish_docs(paths, docs)
    assert sorted(p.name for p in written) == sorted(
        ["results.csv", "results.json", "accuracy_vs_macs.png", "train_loss.png", "results.md"])


# --------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--epochs", "0"], "--epochs must be at least 1"),
    (["--smoke", "--batch-size", "-3"], "--batch-size must be at least 1"),
    (["--smoke", "--methods", "mutual,bogus"], "unknown method 'bogus'"),
    (["--smoke", "--seeds", "0,x"], "--seeds must be a comma list of integers"),
    (["--smoke", "--seeds", "1,1"], "lists a value twice"),
    (["--smoke", "--grid-widths", "0.1,1.0"], "outside the trained range"),
    (["--smoke", "--lr", "0"], "--lr must be a positive number"),
    (["--smoke", "--docs"], "a --smoke run publishes nothing"),
    (["--smoke", "--benchmarks"], "a --smoke run publishes nothing"),
    (["--smoke", "--skip-existing", "--overwrite"], "pick one"),
    (["--smoke", "--backbone", "nosuchnet"], "unknown model 'nosuchnet'"),
    (["--smoke", "--device", "tpu"], "--device must be"),
    (["--data", "/nonexistent/cifar.npz"], "does not exist; pass --data PATH"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert rc.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_argparse_type_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        rc.main(["--epochs", "many"])
    assert e.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_report_only_needs_a_sweep(tmp_path, capsys):
    assert rc.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert "holds no sweep" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end
def _tiny_argv(out: Path) -> list[str]:
    return ["--smoke", "--quiet", "--out", str(out), "--methods", "all", "--wide",
            "tiny_mobilenet", "--train-images", "48", "--val-images", "30", "--batch-size",
            "16", "--calib-images", "16", "--grid-widths", "0.25,1.0", "--export-max", "2",
            "--export-images", "20"]


def test_smoke_sweep_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert rc.main(_tiny_argv(out)) == 0
    printed = capsys.readouterr().out
    assert "# CIFAR-10 reproduction" in printed and "not measured" in printed
    for name in ("results.csv", "results.json", "results.md", "gpu_section.md",
                 "accuracy_vs_macs.png", "train_loss.png", "sweep.json"):
        assert (out / name).is_file(), name
    assert (out / "accuracy_vs_macs.png").read_bytes().startswith(PNG_MAGIC)
    doc = json.loads((out / "results.json").read_text())
    assert {r["run"] for r in doc["runs"]} == {"mutual", "us_net", "independent-w1.00",
                                                "independent-w0.50", "independent-w0.25",
                                                "wide_plain", "wide_mutual"}
    mutual = next(r for r in doc["runs"] if r["run"] == "mutual")
    assert len(mutual["points"]) == 2 * 4 and mutual["train"]["steps"] == 3
    assert mutual["train"]["train_macs_per_image"] > mutual["train"]["forward_macs_full"]
    assert doc["export"]["failed"] == [] and doc["export"]["error"] is None
    assert (out / "export" / "mutual-seed0" / "manifest.json").is_file()
    assert "All subnets passed parity" in (out / "results.md").read_text()
    run = out / "runs" / "mutual" / "seed0"
    assert len(rc.read_jsonl(run / "steps.jsonl")) == 3

    # a second call without --skip-existing refuses to clobber the sweep
    assert rc.main(_tiny_argv(out)) == 2
    assert "--skip-existing" in capsys.readouterr().err

    # a crash after training, before evaluation: --skip-existing evaluates without retraining
    ckpt = run / "checkpoint.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    (run / "grid.json").unlink()
    (run / "train.json").unlink()
    assert rc.main([*_tiny_argv(out), "--skip-existing", "--no-export"]) == 0
    assert ckpt.stat().st_mtime_ns == mtime
    assert (run / "grid.json").is_file() and (run / "train.json").is_file()

    # report-only re-reads the finished sweep with its stored settings
    capsys.readouterr()
    assert rc.main(["--report-only", "--quiet", "--out", str(out)]) == 0
    assert "Export of the MutualNet run" in capsys.readouterr().out
    # and a smoke sweep is never published
    assert rc.main(["--report-only", "--out", str(out), "--benchmarks"]) == 2


def test_changed_settings_are_refused(tmp_path):
    s = _settings()
    out = tmp_path / "o"
    out.mkdir()
    rc.write_json(out / rc.SETTINGS_FILE, s.describe())
    other = dataclasses.replace(s, epochs=5)
    with pytest.raises(UsageError, match="other settings .*epochs: 1 -> 5"):
        rc.check_out_dir(out, other, skip_existing=True, overwrite=False, report_only=False)
    more_seeds = dataclasses.replace(s, seeds=(0, 1))  # adding seeds later is fine
    rc.check_out_dir(out, more_seeds, skip_existing=True, overwrite=False, report_only=False)


@pytest.mark.gpu
def test_gpu_sweep_measures_throughput(tmp_path):
    """On a GPU, non-smoke runs fill the GPU section with figures (tiny models, 2 epochs)."""
    from mutualnet.data import BUNDLED_NPZ

    out = tmp_path / "g"
    argv = ["--quiet", "--out", str(out), "--data", str(BUNDLED_NPZ), "--device", "cuda",
            "--backbone", "tiny_mobilenet", "--wide", "tiny_mobilenet", "--epochs", "2",
            "--seeds", "0", "--methods", "mutual,independent", "--train-images", "512",
            "--val-images", "100", "--calib-images", "128", "--grid-widths", "0.25,1.0",
            "--no-export"]
    assert rc.main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    train = next(r["train"] for r in doc["runs"] if r["run"] == "mutual")
    assert train["cuda"] and train["images_per_s"] > 0 and train["peak_memory_bytes"] > 0
    section = (out / "gpu_section.md").read_text()
    assert "x independent-w1.00" in section and "| mutual | tiny_mobilenet | not" not in section


@pytest.mark.slow
def test_default_smoke_run(tmp_path):
    """The documented `--smoke` command as is (tiny_mobilenet + WRN-10-1; about a minute)."""
    assert rc.main(["--smoke", "--quiet", "--out", str(tmp_path / "s")]) == 0
    doc = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(doc["runs"]) == 7 and doc["export"]["failed"] == []
