"""`mutualnet models` / `mutualnet flops`: output and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mutualnet.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_flops_prints_spec_value() -> None:
    r = run("flops", "mobilenet_v1", "--width", "1.0", "--resolution", "224")
    assert r.exit_code == 0, r.output
    assert "568.8M" in r.output


def test_flops_json_grid_one_object_per_pair() -> None:
    r = run("flops", "mobilenet_v2", "--width", "0.7,1.0", "--resolution", "128,224", "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert len(rows) == 4
    assert set(rows[0]) == {"model", "width", "resolution", "macs", "params"}
    by_pair = {(d["width"], d["resolution"]): d["macs"] for d in rows}
    assert round(by_pair[(0.7, 128)] / 1e6, 1) == 57.6


def test_flops_classes_option_changes_params() -> None:
    a = json.loads(run("flops", "tiny_mobilenet", "--json").output)
    b = json.loads(run("flops", "tiny_mobilenet", "--classes", "100", "--json").output)
    assert b["params"] - a["params"] == 90 * 64 + 90


def test_models_lists_registry() -> None:
    r = run("models")
    assert r.exit_code == 0
    assert "mobilenet_v1" in r.output and "25.6M" in r.output


@pytest.mark.parametrize("args, message", [
    (["flops", "nope"], "known models"),
    (["flops", "mobilenet_v1", "--width", "abc"], "not a number"),
    (["flops", "mobilenet_v1", "--width", "0"], "positive"),
    (["flops", "mobilenet_v1", "--width", "0.05"], "smallest meaningful width"),
    (["flops", "mobilenet_v1", "--resolution", "16"], "minimum of 32"),
    (["flops", "mobilenet_v1", "--resolution", "x"], "not an integer"),
])
def test_bad_input_is_usage_error(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_console_script_error_is_one_line() -> None:
    p = subprocess.run([sys.executable, "-c", "from mutualnet.cli import main; main()",
                        "flops", "nope"], capture_output=True, text=True)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "unknown model" in p.stderr


def test_os_errors_become_one_line_failures(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = run("train", "--out", str(blocker / "run"), "--set", "num_epochs=1")
    assert r.exit_code in (1, 2), r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
