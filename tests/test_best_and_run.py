"""`mutualnet best` and `mutualnet run` answer a budget alike: one rule (export.budget.choose),
one accuracy (the manifest's selection accuracy), the same tie rule and the same behaviour
below the smallest subnet (fall back with a note, or --strict: exit 1)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "data"))
from deploy_fixtures import make_export  # noqa: E402

from export.budget import candidates_from_manifest, choose  # noqa: E402
from export.manifest import load_manifest, update_manifest  # noqa: E402
from export.runtime import SubnetRuntime  # noqa: E402
from mutualnet.cli import cli  # noqa: E402

# ties on purpose: two pairs of subnets with equal parity accuracy, and the largest one less
# accurate than a smaller one
GRID = ((0.25, 12, 50.0), (0.5, 12, 50.0), (0.75, 12, 45.0), (0.5, 16, 60.0),
        (1.0, 16, 60.0))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_export(tmp_path_factory.mktemp("best_run") / "export", grid=GRID)

    def eval_accuracy(doc: dict) -> None:   # the full eval of one point differs from parity
        for sn in doc["subnets"]:
            if sn["id"] == "w0.75-r12":
                sn["selection_accuracy"] = {"top1": 60.0, "source": "eval", "images": 10000}

    update_manifest(root, eval_accuracy)
    return root


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
    return path


def _budgets(export_dir: Path) -> list[float]:
    macs = sorted(s.mmacs for s in load_manifest(export_dir).subnets)
    return [macs[0] / 2, *(m * f for m in macs for f in (0.999, 1.0, 1.001)), macs[-1] * 10]


def _invoke(*args: object) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def test_best_and_run_choose_the_same_subnet_for_every_budget(export_dir: Path,
                                                              image: Path) -> None:
    manifest = load_manifest(export_dir)
    seen = set()
    with SubnetRuntime.load(export_dir, threads=1) as rt:
        for budget in _budgets(export_dir):
            code, out, err = _invoke("best", export_dir, "--budget-mmacs", budget, "--json")
            assert code == 0, err
            best = json.loads(out)["id"]
            code, out, err = _invoke("run", export_dir, image, "--budget-mmacs", budget,
                                     "--json", "--threads", "1")
            assert code == 0, err
            ran = json.loads(out)["subnet"]
            library = choose(candidates_from_manifest(manifest), mmacs=budget).subnet_id
            assert best == ran == library == rt.choose_budget(mmacs=budget).subnet_id, budget
            seen.add(best)
    # the ties went to the cheaper subnet, and the eval accuracy (60 %) of w0.75-r12 counted:
    # w0.50-r12 (50 %, tied with w0.25-r12) and w1.00-r16 (60 %, tied, dearer) never win
    assert seen == {"w0.25-r12", "w0.75-r12"}


def test_best_and_run_behave_the_same_below_the_smallest(export_dir: Path,
                                                         image: Path) -> None:
    tiny = _budgets(export_dir)[0]
    code, out, err = _invoke("best", export_dir, "--budget-mmacs", tiny)
    assert code == 0 and out.startswith("w0.25-r12:")
    assert "note: budget" in err and "below the smallest subnet w0.25-r12" in err
    code, out, err = _invoke("run", export_dir, image, "--budget-mflops", tiny)  # the alias
    assert code == 0 and "subnet w0.25-r12" in err
    assert "note: budget" in err and "below the smallest subnet w0.25-r12" in err
    for cmd in (("best", export_dir), ("run", export_dir, image)):
        code, out, err = _invoke(*cmd, "--budget-mmacs", tiny, "--strict")
        assert code == 1 and out == "", (cmd, out)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "below the smallest subnet w0.25-r12" in lines[0], err
        assert "drop --strict" in lines[0]


def test_best_on_an_eval_json_uses_the_same_rule(export_dir: Path, tmp_path: Path) -> None:
    """`best` on the run's eval.json and on the export whose selection accuracy came from it
    pick the same point."""
    manifest = load_manifest(export_dir)
    points = [{"width": s.width, "resolution": s.resolution, "macs": s.macs,
               "params": s.params, "top1": s.top1(), "top5": 90.0, "images": 100}
              for s in manifest.subnets]
    (tmp_path / "eval.json").write_text(json.dumps({"label": "run", "points": points}))
    for budget in _budgets(export_dir):
        a = _invoke("best", tmp_path / "eval.json", "--budget-mmacs", budget, "--json")
        b = _invoke("best", export_dir, "--budget-mmacs", budget, "--json")
        assert a[0] == b[0] == 0 and json.loads(a[1])["id"] == json.loads(b[1])["id"]
    code, out, _ = _invoke("best", tmp_path / "eval.json", "--budget-mmacs", 1e6)
    assert code == 0 and "M MACs" in out and "MFLOPs" not in out and "top-5 90.00%" in out
