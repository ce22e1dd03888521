"""Bad input around `export --auto N`, `--latency-table` and `profile --latency-table`: exit 2,
one line, no traceback, no pre-existing file changed, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _runs import ForkingCli, copy_run, run_and_export
from faultkit import assert_clean_failure, snapshot

from export.autoselect import LatencyTable, measured, table_document
from mutualnet.checkpoint import CHECKPOINT_FILE, sha256_file

FAST = ["--calib-images", "0", "--eval-images", "16", "--no-progress"]
GRID = [(w, r) for w in (0.25, 0.5, 0.75, 1.0) for r in (32, 28, 24, 20)]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, cli: ForkingCli) -> tuple[Path, Path]:
    """(a tiny run, an export of two of its subnets)."""
    return run_and_export(tmp_path_factory.mktemp("faults_auto"), cli, "0.25@20,1.0@32", *FAST)


@pytest.fixture
def work(tmp_path: Path, base: tuple[Path, Path]) -> Path:
    """A copy of the run (run/), of its export (deploy/) and a good latency table (lat.json)."""
    copy_run(base[0], tmp_path / "run")
    shutil.copytree(base[1], tmp_path / "deploy")
    rows = tuple(measured(w, r, macs=int(w * r * r * 100), accuracy=10.0 + w, p50_ms=w * r,
                          p90_ms=w * r * 1.1, runs=100) for w, r in GRID)
    table = LatencyTable("tiny_mobilenet", sha256_file(tmp_path / "run" / CHECKPOINT_FILE),
                         rows, "2026-01-01T00:00:00Z", 2)
    (tmp_path / "lat.json").write_text(json.dumps(table_document(table)))
    return tmp_path


def _check(cli: ForkingCli, work: Path, args: list[str | Path], contains: str) -> None:
    before = snapshot(work)
    r = cli(args, cwd=work)
    assert_clean_failure(r, 2, contains=contains, before=before, roots=[work])
    assert not (work / "out").exists(), "an export was written"
    assert not list(work.glob(".*")), "a staging directory or lock was left behind"


@pytest.mark.parametrize(("args", "contains"), [
    (["--auto", "0"], "0 is not in the range x>=1"),
    (["--auto", "four"], "'four' is not a valid integer"),
    (["--auto", "2", "--widths", "0.5"], "drop --widths/--resolutions/--pairs"),
    (["--auto", "2", "--pairs", "0.25@20"], "drop --widths/--resolutions/--pairs"),
    (["--latency-table", "lat.json"], "--latency-table is for --auto N"),
    (["--auto", "2", "--latency-table", "missing.json"], "cannot read missing.json"),
    (["--auto", "2", "--profile", "jetson-orin-nano"], "measure on the device"),
    (["--auto", "2", "--out", "deploy"], "exists and is not empty"),
])
def test_bad_auto_usage(cli: ForkingCli, work: Path, args: list[str], contains: str) -> None:
    out = [] if "--out" in args else ["--out", "out"]
    _check(cli, work, ["export", "run", *args, *out, *FAST], contains)


def _edit(work: Path, change) -> None:
    doc = json.loads((work / "lat.json").read_text())
    change(doc)
    (work / "lat.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(("change", "contains"), [
    (lambda d: d["rows"].pop(3), "missing w0.25-r20"),
    (lambda d: d["rows"][0].update(id="w1.00-r40", width=1.0, resolution=40),
     "not in the checkpoint's grid: w1.00-r40"),
    (lambda d: d.update(checkpoint_sha256="0" * 64), "another checkpoint"),
    (lambda d: d["rows"][0].update(spread=1.0), "unknown key 'spread' in rows[0]"),
    (lambda d: d.update(version=9), "version 9 latency table"),
    (lambda d: d["rows"][2].update(p50_ms=-1.0), "0 < p50_ms <= p90_ms"),
])
def test_bad_latency_tables(cli: ForkingCli, work: Path, change, contains: str) -> None:
    _edit(work, change)
    _check(cli, work, ["export", "run", "--auto", "2", "--latency-table", "lat.json",
                       "--out", "out", *FAST], contains)


@pytest.mark.parametrize(("text", "contains"), [
    ('{"format": "mutualnet-latency-table", "version": 1, "rows": [{"p50_ms": NaN}]}',
     "NaN and Infinity are refused"),
    ('{"format": "mutualnet-latency', "not valid JSON"),
    ("", "not valid JSON"),
])
def test_unreadable_latency_tables(cli: ForkingCli, work: Path, text: str,
                                   contains: str) -> None:
    (work / "lat.json").write_text(text)
    _check(cli, work, ["export", "run", "--auto", "2", "--latency-table", "lat.json",
                       "--out", "out", *FAST], contains)


def test_profile_latency_table_takes_one_batch(cli: ForkingCli, work: Path) -> None:
    _check(cli, work, ["profile", "deploy", "--latency-table", "new.json", "--batch", "1,8"],
           "records one batch size")
    assert not (work / "new.json").exists()
