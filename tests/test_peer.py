"""Side by side with the original MutualNet / US-Nets code (benchmarks/peer).

Without the reference checkouts in refs/ the scripts must skip with a clear message; with
them, MobileNet v1 must match the original to float precision, the comparison must be able
to fail, and the training benchmark's replayed subnet draws must be the original's.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.peer import _refs  # noqa: E402
from benchmarks.peer._pairs import (  # noqa: E402
    PAIRS,
    Theirs,
    build_ours,
    build_theirs,
    copy_weights,
    find_pair,
    load_ref,
    map_parameters,
    randomize,
)

MISSING = _refs.missing_message()
needs_refs = pytest.mark.skipif(
    MISSING is not None,
    reason=f"{MISSING} (clone taoyang1122/MutualNet and JiahuiYu/slimmable_networks into "
           "refs/, see docs/peer.md)")


@pytest.fixture
def no_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(_refs.REFS_ENV, str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("script", ["equivalence", "train_step", "flops"])
def test_scripts_skip_without_refs(script: str, no_refs: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    module = importlib.import_module(f"benchmarks.peer.{script}")
    before = (REPO / "BENCHMARKS.md").read_text() if (REPO / "BENCHMARKS.md").exists() else None
    assert module.main([]) == 0
    out = capsys.readouterr().out
    assert "reference checkout" in out and "is absent" in out and "git clone" in out
    assert str(no_refs) in out
    after = (REPO / "BENCHMARKS.md").read_text() if (REPO / "BENCHMARKS.md").exists() else None
    assert before == after


def test_script_skips_as_a_command(no_refs: Path) -> None:
    env = {**__import__("os").environ, _refs.REFS_ENV: str(no_refs)}
    out = subprocess.run([sys.executable, "benchmarks/peer/flops.py"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MutualNet is absent" in out.stdout and "skipping" in out.stdout


def test_ref_path_names_the_fix(no_refs: Path) -> None:
    with pytest.raises(_refs.ReferenceMissing, match="git clone https://github.com/"
                                                     "taoyang1122/MutualNet"):
        _refs.ref_path("MutualNet")


@needs_refs
def test_loads_are_isolated_and_leave_sys_modules_alone() -> None:
    before = {k for k in sys.modules if k.split(".")[0] in ("models", "utils", "train")}
    a = _refs.load_reference("MutualNet", {"width_mult_range": [0.25, 1.0],
                                           "width_mult_list": [0.25, 1.0]}, ["models.resnet"])
    b = _refs.load_reference("MutualNet", {"width_mult_range": [0.7, 1.0],
                                           "width_mult_list": [0.7]}, ["models.resnet"])
    after = {k for k in sys.modules if k.split(".")[0] in ("models", "utils", "train")}
    assert before == after
    assert a.flags is not b.flags
    assert a.flags.width_mult_list == [0.25, 1.0] and b.flags.width_mult_list == [0.7]
    assert a["models.resnet"].FLAGS is a.flags and b["models.resnet"].FLAGS is b.flags
    assert len(_refs.commit_id("MutualNet")) == 40


@needs_refs
def test_mapping_is_checked() -> None:
    v1, v2 = find_pair("mobilenet_v1"), find_pair("mobilenet_v2")
    theirs = build_theirs(load_ref(v1, v1.widths()), v1)
    assert map_parameters(theirs, build_ours(v1)).elements == sum(
        p.numel() for p in theirs.parameters())
    with pytest.raises(AssertionError, match="parameter count differs|mapping broken"):
        map_parameters(theirs, build_ours(v2))


@needs_refs
def test_mobilenet_v1_matches_the_original_and_a_difference_is_seen() -> None:
    from benchmarks.peer.equivalence import check_point, run_pair, tolerance

    # the benchmark's widths and code path at smaller sides (it runs 224 and 128)
    spec = dataclasses.replace(find_pair("mobilenet_v1"), resolutions=(96, 64))
    res = run_pair(spec)
    assert res.grid_mismatch is None
    assert len(res.points) == 6
    for p in res.points:
        assert p.channels is None
        assert p.max_abs_diff <= tolerance(p.max_abs_logit), p
        assert p.bn_stat_diff <= 1e-5
        assert p.max_abs_logit > 0.1   # the logits are not trivially zero

    # the same comparison sees a 1e-3 change of one classifier bias
    ref = load_ref(spec, spec.widths(), extra=("ComputePostBN",))
    theirs = Theirs(ref, spec)
    ours = build_ours(spec)
    randomize(theirs.main)
    copy_weights(theirs.main, ours)
    with torch.no_grad():
        ours.classifier.bias[3] += 1e-3
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 96, 96, generator=g)]
    p = check_point(theirs, ours, spec, 0.25, 64, calib, torch.randn(2, 3, 96, 96,
                                                                     generator=g))
    assert p.max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    assert p.max_abs_diff > tolerance(p.max_abs_logit)


@needs_refs
def test_channel_mismatch_is_reported() -> None:
    from benchmarks.peer._pairs import first_mismatch

    a = [("conv", 3, 16, 112), ("bn", 16, 16, 112)]
    b = [("conv", 3, 16, 112), ("bn", 24, 24, 112)]
    assert first_mismatch(a, b, ["c", "features.0.1"]) == (
        "features.0.1: theirs ('bn', 16, 16, 112) ours ('bn', 24, 24, 112)")
    assert first_mismatch(a, a, ["c", "b"]) is None


@needs_refs
def test_their_profiler_agrees_and_divisor_one_does_not() -> None:
    from benchmarks.peer.flops import divisor, profile
    from mutualnet.flops import count

    spec = find_pair("mobilenet_v2")
    ref = load_ref(spec, [0.7, 0.85], extra=("utils.model_profiling", "models.slimmable_ops"))
    theirs = build_theirs(ref, spec)
    ours = build_ours(spec)
    for w, r in ((0.7, 128), (0.85, 160)):
        assert profile(ref, theirs, w, r)[0] == count(ours, w, r).macs
    with divisor(ref, 1):
        m1 = build_theirs(ref, spec)
        assert profile(ref, m1, 0.7, 128)[0] < count(ours, 0.7, 128).macs
    assert ref["models.slimmable_ops"].make_divisible(0.85 * 24) == 24   # restored


@needs_refs
def test_replayed_draws_are_the_originals() -> None:
    """Run the original's train() for 2 steps and record the (width, input side) of every
    training forward; ours must replay exactly those subnets."""
    from benchmarks.peer.train_step import (
        _Repeat,
        draw_subnets,
        run_theirs,
        setup_theirs,
    )

    spec = find_pair("mobilenet_v1")
    sides = (64, 56, 48, 40)   # same code path as 224..128, a tenth of the work
    t = setup_theirs(spec, 2, 3, seed=7, resolutions=sides)
    model = t["model"].module
    seen: list[tuple[float, int, bool]] = []
    first = model.features[0][0]
    first.register_forward_hook(lambda m, i, o: seen.append(
        (m.width_mult, i[0].shape[-1], torch.is_grad_enabled())))
    run_theirs(t, _Repeat(t["batch"], 3), seed=7)
    trained = [(w, r) for w, r, grad in seen if grad]
    expected = []
    for step in draw_subnets(spec, 3, seed=7):
        expected.append((spec.width_range[1], sides[0]))
        expected += [(w, sides[i]) for w, i in step]
    assert trained == expected


@pytest.mark.slow
@needs_refs
@pytest.mark.parametrize("spec", [s for s in PAIRS if s != find_pair("mobilenet_v1")],
                         ids=lambda s: s.label)
def test_every_pair_matches_the_original(spec: object) -> None:
    from benchmarks.peer.equivalence import run_pair, tolerance

    res = run_pair(spec)  # type: ignore[arg-type]
    assert res.grid_mismatch is None
    for p in res.points:
        assert p.channels is None
        assert p.max_abs_diff <= tolerance(p.max_abs_logit), p


@needs_refs
@pytest.mark.parametrize("dataset", ["cifar10", "imagenet1k"])
def test_one_mutual_step_has_the_originals_gradients(dataset: str) -> None:
    """Same weights, batch and draws: the gradients our mutual step accumulates before its one
    optimizer step, and the weights after it (lr, Nesterov, weight-decay scope), are the
    original train()'s; a wrong subnet list is caught (issue 15)."""
    from benchmarks.peer.step_grads import mutual_vs_original

    same = mutual_vs_original(dataset=dataset)
    assert same.tensors == 83
    assert same.grad_rel <= 1e-6 and same.param_abs <= 1e-6, same
    wrong = mutual_vs_original(dataset=dataset, perturb=True)
    assert wrong.grad_rel > 1e-2, wrong


@needs_refs
def test_one_us_net_step_has_the_originals_gradients() -> None:
    """Our us_net step vs US-Nets' run_one_epoch (sandwich rule, in-place distillation):
    equal up to float summation order (theirs runs max, min, randoms; ours max, randoms
    descending, min)."""
    from benchmarks.peer.step_grads import usnet_vs_original

    same = usnet_vs_original()
    assert same.grad_rel <= 1e-5 and same.param_abs <= 1e-5, same
    assert usnet_vs_original(perturb=True).grad_rel > 1e-2
