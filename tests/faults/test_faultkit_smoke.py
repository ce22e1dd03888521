"""The fault suite's checks themselves catch what they should."""

from __future__ import annotations

from pathlib import Path

from faultkit import assert_clean_failure, run_cli, snapshot


def test_unknown_model_is_a_one_line_usage_error(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    before = snapshot(tmp_path)
    r = run_cli(["flops", "no_such_model", "--width", "1.0"], cwd=tmp_path)
    assert_clean_failure(r, 2, contains="no_such_model", before=before, roots=[tmp_path])


def test_snapshot_sees_a_changed_file(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"1")
    before = snapshot(tmp_path)
    f.write_bytes(b"2")
    assert snapshot(tmp_path) != before
