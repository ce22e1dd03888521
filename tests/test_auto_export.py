"""``export --auto N`` on the tiny model: measured here, from a given latency table (the
choice checked exactly), and the device workflow (candidates -> profile without torch ->
export --latency-table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from export.autoselect import (
    CANDIDATES_JSON,
    CANDIDATES_MD,
    CANDIDATES_PNG,
    LatencyTable,
    dominates,
    measured,
    quality_of,
    read_table,
    write_table,
)
from export.manifest import load_manifest
from mutualnet.checkpoint import sha256_file
from mutualnet.cli import cli
from mutualnet.flops import count_by_name

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--calib-images", "256", "--no-progress"]
WIDTHS, RESOLUTIONS = (0.25, 0.5, 0.75, 1.0), (32, 28, 24, 20)


def _cli(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _batch_profile(tmp_path: Path, batch: int) -> Path:
    """The cpu profile measured at ``batch``: at batch 1 the tiny subnets cost about the
    same (call overhead dominates), at 32 their compute separates them."""
    text = (ROOT / "deploy_profiles" / "cpu.yml").read_text()
    text = text.replace("name: cpu\n", f"name: cpu-batch{batch}\n")
    text = text.replace("opt_batch: 1\n", f"opt_batch: {batch}\n")
    text = text.replace("max_batch: 8\n", f"max_batch: {batch}\n")
    path = tmp_path / f"cpu-batch{batch}.yml"
    path.write_text(text)
    return path


def test_auto_4_measured_here_ships_4_non_dominated_points(tiny_checkpoint: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "auto"
    profile = _batch_profile(tmp_path, 32)
    r = _cli("export", tiny_checkpoint, "--auto", 4, "--duration", 0.3, "--profile", profile,
             "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    table = read_table(out / CANDIDATES_JSON)
    assert len(table.rows) == 16 and {m.batch for m in table.rows} == {32}
    doc = json.loads((out / CANDIDATES_JSON).read_text())["selection"]
    q = quality_of(table.rows)[0]
    chosen = [m for m in table.rows if m.label in doc["chosen"]]
    assert len(chosen) == 4, doc["notes"]
    for m in chosen:
        assert not any(dominates(o, m, q) for o in table.rows)
    manifest = load_manifest(out)   # verifies every file, the candidate reports included
    assert sorted(manifest.subnet_ids) == sorted(m.candidate.id for m in chosen)
    assert {"auto_candidates_json", "auto_candidates_md", "auto_candidates_png"} <= set(
        manifest.files)
    assert (out / CANDIDATES_PNG).stat().st_size > 0
    assert "**chosen**" in (out / CANDIDATES_MD).read_text()
    assert "chose 4 of 16 candidates (latency measured here)" in r.output


def _designed_table(checkpoint: Path) -> LatencyTable:
    """The tiny grid with designed latencies: five points on the front, one pair of equal
    latency (w0.50-r20 / w0.50-r24), one tie in p50 and top-1 (w0.75-r20 / w0.75-r24)."""
    design = {(0.25, 20): (10.0, 1.0), (0.5, 20): (11.0, 2.0), (0.5, 24): (11.5, 2.05),
              (0.75, 20): (12.0, 4.0), (0.75, 24): (12.0, 4.0), (1.0, 20): (13.0, 8.0),
              (1.0, 32): (14.0, 16.0)}
    rows = []
    for w in WIDTHS:
        for r in RESOLUTIONS:
            acc, p50 = design.get((w, r), (5.0, 3.0))
            rows.append(measured(w, r, macs=count_by_name("tiny_mobilenet", w, r).macs,
                                 accuracy=acc, p50_ms=p50, p90_ms=p50 * 1.01, runs=1000,
                                 device="Jetson test", backend="tensorrt", load=0.5))
    return LatencyTable("tiny_mobilenet", sha256_file(checkpoint), tuple(rows),
                        "2026-01-01T00:00:00Z", 6)


def test_auto_from_a_given_table_chooses_exactly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    lat = write_table(tmp_path / "lat.json", _designed_table(tiny_checkpoint))
    out = tmp_path / "auto"
    r = _cli("export", tiny_checkpoint, "--auto", 4, "--latency-table", lat, "--out", out,
             "--eval-images", 16, *FAST)
    assert r.exit_code == 0, r.output
    want = ["w0.25-r20", "w0.75-r20", "w1.00-r20", "w1.00-r32"]
    assert load_manifest(out).subnet_ids == want
    sel = json.loads((out / CANDIDATES_JSON).read_text())["selection"]
    assert sel["front"] == ["w0.25-r20", "w0.50-r24", "w0.75-r20", "w1.00-r20", "w1.00-r32"]
    assert sel["chosen"] == want
    assert [n.split(" (")[0] for n in sel["notes"]] == [
        "indistinguishable in latency from w0.50-r24",
        "indistinguishable in latency from w0.75-r20"]
    assert f"chose 4 of 16 candidates (latency from {lat}): {', '.join(want)}" in r.output


def test_device_workflow_profiles_without_torch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cand = tmp_path / "cand"
    r = _cli("candidates", tiny_checkpoint, "--out", cand, "--eval-images", 32, *FAST)
    assert r.exit_code == 0, r.output
    assert len(load_manifest(cand).subnets) == 16
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mutualnet.cli import cli\n"
            f"cli.main(args={['profile', str(cand), '--latency-table', 'lat.json', '--duration', '0.05', '--no-progress']!r}, "
            "prog_name='mutualnet', standalone_mode=False)\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    table = read_table(tmp_path / "lat.json")
    assert len(table.rows) == 16 and table.checkpoint_sha256 == sha256_file(tiny_checkpoint)
    out = tmp_path / "auto"
    r = _cli("export", tiny_checkpoint, "--auto", 2, "--latency-table", tmp_path / "lat.json",
             "--out", out, "--eval-images", 32, *FAST)
    assert r.exit_code == 0, r.output
    assert len(load_manifest(out).subnets) in (1, 2)   # a front of 1 ships 1 (with a note)


@pytest.mark.parametrize("flag", [["--widths", "0.5"], ["--pairs", "0.25@20"],
                                  ["--resolutions", "32"]])
def test_auto_conflicts_with_the_grid_flags(tiny_checkpoint: Path, tmp_path: Path,
                                            flag: list[str]) -> None:
    r = _cli("export", tiny_checkpoint, "--auto", 2, *flag, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "drop --widths/--resolutions/--pairs" in r.output
    assert not (tmp_path / "x").exists()
