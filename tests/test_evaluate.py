"""Evaluation: metrics, the grid, its Pareto front and files (the budget query is
`mutualnet best`, tested in tests/test_best_and_run.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mutualnet.errors import UsageError
from mutualnet.evaluate import (
    GridPoint,
    evaluate,
    format_table,
    load_grid,
    pareto_front,
    run_eval,
    write_grid,
)


def _p(w: float, r: int, macs: int, top1: float) -> GridPoint:
    return GridPoint(w, r, macs * 1000, 1000, top1, min(100.0, top1 + 20), 100)


POINTS = [_p(1.0, 32, 1000, 60.0), _p(0.5, 32, 400, 55.0), _p(1.0, 20, 420, 50.0),
          _p(0.25, 20, 100, 30.0), _p(0.25, 32, 300, 29.0), _p(0.5, 20, 400, 52.0)]


def test_pareto_front_keeps_only_undominated_points() -> None:
    front = pareto_front(POINTS)
    assert [(p.width, p.resolution) for p in front] == [(0.25, 20), (0.5, 32), (1.0, 32)]
    # every other point is dominated by a front point
    for p in POINTS:
        if p not in front:
            assert any(q.macs <= p.macs and q.top1 >= p.top1 for q in front)


def test_write_and_load_grid(tmp_path: Path) -> None:
    files = write_grid(POINTS, tmp_path, label="mine", meta={"model": "x"},
                       compare=[("other", POINTS[:3])])
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(files["csv"].open()))
    assert [int(r["macs"]) for r in rows] == sorted(p.macs for p in POINTS)
    assert sum(int(r["pareto"]) for r in rows) == 3
    doc = json.loads(files["json"].read_text())
    assert doc["label"] == "mine" and doc["model"] == "x"
    label, points = load_grid(tmp_path)
    assert label == "mine" and set(points) == set(POINTS)
    assert not list(tmp_path.glob("*.tmp"))
    table = format_table(POINTS).splitlines()
    assert table[0].split()[:5] == ["width", "res", "MACs", "top-1", "top-5"]
    assert len(table) == 1 + len(POINTS)
    with pytest.raises(UsageError, match="not an eval.json"):
        (tmp_path / "bad.json").write_text("{}")
        load_grid(tmp_path / "bad.json")


def test_evaluate_counts_top1_and_top5_exactly() -> None:
    """A model that always predicts class 0 first, class 1 second, ...: top-1 = share of
    label 0, top-5 = share of labels 0-4."""
    from mutualnet.data import DataSpec, load_data
    from mutualnet.models import create_model

    val = load_data(DataSpec(), "val")
    model = create_model("tiny_mobilenet")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.arange(10, 0, -1, dtype=torch.float32))
    res = evaluate(model, 0.5, 24, val, batch_size=300, limit=700)
    labels = val.labels[:700]
    assert res.images == 700
    assert res.top1 == pytest.approx(100.0 * float((labels == 0).float().mean()))
    assert res.top5 == pytest.approx(100.0 * float((labels < 5).float().mean()))


def test_run_eval_on_a_checkpoint_and_compare(tiny_checkpoint, tmp_path: Path) -> None:
    report = run_eval(tiny_checkpoint, widths=[0.25, 1.0], resolutions=[32, 20],
                      out_dir=tmp_path / "ev", calib_images=500, limit=300, progress=False)
    assert [p.macs for p in report.points] == sorted(p.macs for p in report.points)
    assert len(report.points) == 4 and all(p.images == 300 for p in report.points)
    assert {"csv", "json", "png"} <= set(report.files)
    big = max(report.points, key=lambda p: p.macs)
    assert (big.width, big.resolution) == (1.0, 32) and big.top1 > 15.0
    # overlay this run as "another" one from its eval.json
    again = run_eval(tiny_checkpoint, widths=[0.25], resolutions=[20], out_dir=tmp_path / "ev2",
                     calib_images=200, limit=100, progress=False,
                     compare=[str(tmp_path / "ev" / "eval.json")])
    assert json.loads(again.files["json"].read_text())["compare"] == [report.label]


def test_evaluate_imports_nothing_of_training() -> None:
    """train/loop.py calls evaluate for its per-epoch check; evaluate never imports train/
    (no import circle), not even inside a function."""
    import ast

    import mutualnet.evaluate

    tree = ast.parse(Path(mutualnet.evaluate.__file__).read_text())
    modules = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for a in node.names}
    assert not [m for m in modules if m == "train" or m.startswith(("train.", "mutualnet.train"))]
    assert "device" in modules  # the device rule it used to borrow from train.loop
