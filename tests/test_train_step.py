"""The training step computes exactly what SPEC section 3 says (checked on the tiny model)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mutualnet.config import TrainConfig, config_from_dict
from mutualnet.data import resize_to
from mutualnet.errors import TrainingDivergedError
from mutualnet.models import create_model
from mutualnet.train import (
    CosineSchedule,
    Subnet,
    build_optimizer,
    cosine_lr,
    param_groups,
    sample_subnets,
    train_step,
)
from mutualnet.train import step as step_mod

RES = (32, 28, 24, 20)


def _draw(method: str = "mutual", step: int = 0, seed: int = 0, **kw) -> tuple[Subnet, ...]:
    return sample_subnets(method, step=step, seed=seed, width_range=(0.25, 1.0),
                          resolutions=RES, base_resolution=32, **kw)


def test_mutual_draws_follow_the_spec() -> None:
    seen_res, seen_w = set(), []
    for step in range(200):
        subs = _draw(step=step)
        widths = [s.width for s in subs]
        assert len(subs) == 4 and widths == sorted(widths, reverse=True)
        assert widths[0] == 1.0 and widths[-1] == 0.25
        assert subs[0] == Subnet(1.0, 32, False)  # teacher: max width, base resolution, CE
        assert all(s.distill and s.resolution in RES for s in subs[1:])
        seen_res.update(s.resolution for s in subs[1:])
        seen_w += widths[1:3]
    assert seen_res == set(RES)  # every resolution of the list gets drawn
    assert 0.25 < min(seen_w) < 0.35 and 0.9 < max(seen_w) < 1.0  # continuous, uniform-ish
    # same (seed, step) => same draw (every DDP rank, a resumed run); other step => other draw
    assert _draw(step=5) == _draw(step=5)
    assert _draw(step=5) != _draw(step=6) and _draw(step=5) != _draw(step=5, seed=1)


def test_baseline_draws() -> None:
    us = _draw("us_net", step=3)
    assert [s.width for s in us] == [s.width for s in _draw(step=3)]  # same sandwich
    assert all(s.resolution == 32 for s in us) and [s.distill for s in us] == [False] + [True] * 3
    assert _draw("independent", step=3) == (Subnet(1.0, 32, False),)
    assert _draw("independent", fixed_width=0.5) == (Subnet(0.5, 32, False),)
    assert len(_draw(num_random=0)) == 2


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("tiny_mobilenet")
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    return model, x, y


def test_step_runs_four_forwards_in_order_and_one_optimizer_step(monkeypatch) -> None:
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    calls: list[tuple[float, int, bool]] = []
    model.register_forward_pre_hook(
        lambda m, args: calls.append((m.width, args[0].shape[-1], torch.is_grad_enabled())))
    steps = []
    original = opt.step
    monkeypatch.setattr(opt, "step", lambda *a, **k: (steps.append(1), original(*a, **k)))
    teachers = []
    real_distill = step_mod.distill_loss

    def spy(student, teacher):
        teachers.append(teacher)
        return real_distill(student, teacher)

    monkeypatch.setattr(step_mod, "distill_loss", spy)
    subs = _draw(step=11)
    out = train_step(model, opt, x, y, subs)
    assert [(w, r) for w, r, _ in calls] == [(s.width, s.resolution) for s in subs]
    assert all(g for _, _, g in calls)
    assert steps == [1]
    assert len(teachers) == 3 and all(not t.requires_grad for t in teachers)
    assert all(t is teachers[0] for t in teachers)  # one teacher: the max width's logits
    assert model.width == 1.0  # the subnet scope was restored
    assert len(out.losses) == 4 and all(torch.isfinite(v) for v in out.losses)


def test_step_gradient_equals_spec_loss() -> None:
    """Accumulated gradients = grad of CE(max@base) + sum KL(teacher.detach() || student@r)."""
    model, x, y = _setup(1)
    subs = _draw(step=2)
    ref = create_model("tiny_mobilenet")
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: step leaves grads and weights
    out = train_step(model, opt, x, y, subs)

    with ref.subnet(1.0):
        logits_t = ref(x)
    total = F.cross_entropy(logits_t, y)
    teacher = logits_t.detach()
    for s in subs[1:]:
        with ref.subnet(s.width):
            student = ref(F.interpolate(x, size=(s.resolution,) * 2, mode="bilinear",
                                        align_corners=True))
        kl = (F.softmax(teacher, 1) * (F.log_softmax(teacher, 1) - F.log_softmax(student, 1)))
        total = total + kl.sum(1).mean()
    total.backward()
    torch.testing.assert_close(out.total, total.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_us_net_step_never_resizes(monkeypatch) -> None:
    model, x, y = _setup()
    shapes = []
    model.register_forward_pre_hook(lambda m, a: shapes.append(a[0].shape[-1]))
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, _draw("us_net", 4))
    assert shapes == [32, 32, 32, 32]


def test_resize_is_bilinear_align_corners_on_the_batch_device() -> None:
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(resize_to(x, 20), F.interpolate(
        x, size=(20, 20), mode="bilinear", align_corners=True))


def test_nan_loss_raises_before_the_optimizer_steps() -> None:
    model, x, y = _setup()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="nan"):
        train_step(model, opt, x, y, _draw(step=0))
    for k, v in before.items():
        assert torch.equal(dict(model.named_parameters())[k], v), k


def test_weight_decay_groups() -> None:
    model = create_model("tiny_mobilenet")
    groups = param_groups(model, 1e-4, "conv_linear")
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    expected = {n for n, m in model.named_modules()
                if (isinstance(m, torch.nn.Conv2d) and not m.depthwise)
                or isinstance(m, torch.nn.Linear)}
    assert names == {f"{n}.weight" for n in expected}
    assert groups[1]["weight_decay"] == 0.0
    assert any("features.1.0.0.weight" == n for n, p in model.named_parameters()
               if id(p) not in decayed)  # a depthwise conv: no decay
    (all_group,) = param_groups(model, 5e-4, "all")
    assert len(all_group["params"]) == len(list(model.parameters()))
    opt = build_optimizer(model, config_from_dict({"lr": 0.5, "lr_batch_size": 1024,
                                                   "batch_size": 256}))
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.125)


def test_cosine_schedule_per_iteration_to_zero() -> None:
    model = create_model("tiny_mobilenet")
    opt = build_optimizer(model, TrainConfig())
    sched = CosineSchedule(opt, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.lr)
        sched.step()
    assert lrs[0] == 0.1 and sched.lr == 0.0  # no warm-up; reaches 0 after the last step
    assert lrs == [cosine_lr(0.1, i, 10) for i in range(10)]
    assert lrs[5] == pytest.approx(0.05) and all(a > b for a, b in zip(lrs[:-1], lrs[1:], strict=True))
    assert math.isclose(cosine_lr(1.0, 3, 12), 0.5 * (1 + math.cos(math.pi / 4)))
    other = CosineSchedule(build_optimizer(model, TrainConfig()), total_steps=1)
    other.load_state_dict({**sched.state_dict(), "last_step": 4})
    assert other.lr == lrs[4]
