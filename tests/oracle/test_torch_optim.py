"""Optimizers, lr schedules, gradient clipping and FedProx against torch.optim, step by step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from .torch_harness import compare_with_torch, load_into, random_batches, same, torch, transpose

COVERS = {"adam", "adamw", "rmsprop", "adagrad", "sgd"}

nn = torch.nn
F = torch.nn.functional
S = torch.optim.lr_scheduler

SRC = """model M:
    input x: f32[10]
    target y: class[4]
    h = tanh(dense(x, 16))
    logits = dense(h, 4)
    loss = softmax_cross_entropy(logits, y)
optimizer {optimizer}
{federated}"""


class TorchStep:
    """torch's side of train_step's update: + μ/2‖w − w₀‖² (FedProx), clip_grad_norm_, the
    optimizer's step, the scheduler's step (once per optimizer step, as the module does)."""

    def __init__(self, params: list[Any], opt: Any, sched: Callable[[Any], Any] | None,
                 clip: float | None, mu: float) -> None:
        self.params, self.opt, self.clip, self.mu = params, opt, clip, mu
        self.sched = sched(opt) if sched else None
        self.anchor: list[Any] | None = None
        self.norms: list[float] = []

    def zero_grad(self) -> None:
        self.opt.zero_grad()

    def step(self) -> None:
        if self.mu:
            assert self.anchor is not None
            prox = sum(((p - a) ** 2).sum() for p, a in zip(self.params, self.anchor, strict=True))
            (self.mu / 2 * prox).backward()  # the proximal term of FedProx's local objective
        if self.clip is not None:
            self.norms.append(float(nn.utils.clip_grad_norm_(self.params, self.clip)))
        self.opt.step()
        if self.sched is not None:
            self.sched.step()


def _mlp(fedc: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    l0, l1 = nn.Linear(10, 16), nn.Linear(16, 4)
    params = {}
    for i, layer in enumerate((l0, l1)):
        params[f"dense_{i}.weight"] = (layer.weight, transpose)
        params[f"dense_{i}.bias"] = (layer.bias, same)
    load_into(None, fedc, params)
    return (lambda x, y: F.cross_entropy(l1(torch.tanh(l0(x))), y)), params


def run(optimizer: str, make: Callable[[list[Any]], Any], *, steps: int = 6,
        sched: Callable[[Any], Any] | None = None, clip: float | None = None,
        mu: float = 0.0) -> TorchStep:
    """Train the same MLP in fedc and torch for `steps` batches; returns torch's side."""
    federated = f"federated:\n    strategy = fedprox\n    proximal_mu = {mu}\n" if mu else ""
    held: dict[str, Any] = {}

    def build(w: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
        loss_fn, params = _mlp(w)
        held["params"] = params
        return loss_fn, params

    def make_step(ps: list[Any]) -> TorchStep:
        held["step"] = TorchStep(ps, make(ps), sched, clip, mu)
        return held["step"]

    def set_anchor(step: int, model: Any, torch_step: TorchStep) -> None:
        if step or not mu:
            return
        # an anchor away from the start, so the proximal term acts from the first step
        anchor = model.get_weights() + np.random.default_rng(5).normal(
            0, 0.2, model.num_params).astype(np.float32)
        model.set_anchor(anchor)
        base = model.manifest["params_region"]["offset"]
        torch_step.anchor = []
        for meta in model.manifest["params"]:
            p, to_fedc = held["params"][meta["name"]]
            start = (meta["offset"] - base) // 4
            flat = anchor[start: start + meta["size"]].reshape(meta["shape"])
            torch_step.anchor.append(to_fedc(torch.as_tensor(flat)).clone())

    batches = random_batches(np.random.default_rng(1), [8, 8, 5, 8] * (steps // 4 + 1), (10,),
                             classes=4)[:steps]
    compare_with_torch(SRC.format(optimizer=optimizer, federated=federated), build, make_step,
                       batches, hparam_updates=set_anchor)
    return held["step"]


optim = torch.optim
CASES: list[tuple[str, Callable[[list[Any]], Any]]] = [
    ("adam", lambda ps: optim.Adam(ps)),
    ("adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05)",
     lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("adam(lr=0.02, amsgrad=true)", lambda ps: optim.Adam(ps, lr=0.02, amsgrad=True)),
    ("adamw(lr=0.01, weight_decay=0.2, beta2=0.95)",
     lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.2, betas=(0.9, 0.95))),
    ("adamw(lr=0.01, amsgrad=true)", lambda ps: optim.AdamW(ps, lr=0.01, amsgrad=True)),
    ("rmsprop(lr=0.005)", lambda ps: optim.RMSprop(ps, lr=0.005)),
    ("rmsprop(lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.5, centered=true)",
     lambda ps: optim.RMSprop(ps, lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.5,
                          centered=True)),
    ("adagrad(lr=0.05)", lambda ps: optim.Adagrad(ps, lr=0.05)),
    ("adagrad(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1, "
     "eps=1e-6)",
     lambda ps: optim.Adagrad(ps, lr=0.1, lr_decay=0.05, weight_decay=0.01,
                          initial_accumulator_value=0.1, eps=1e-6)),
]


@pytest.mark.parametrize("optimizer,make", CASES, ids=[c[0].split(")")[0] + ")" for c in CASES])
def test_optimizer_matches_torch(optimizer: str, make: Callable[[list[Any]], Any]) -> None:
    run(optimizer, make)


def test_gradient_clipping_that_triggers_matches_torch() -> None:
    t = run("sgd(lr=0.5, momentum=0.9, clip_norm=0.3)",
            lambda ps: optim.SGD(ps, lr=0.5, momentum=0.9), clip=0.3)
    assert all(n > 0.3 for n in t.norms), t.norms  # every step was clipped


def test_gradient_clipping_below_the_threshold_matches_torch() -> None:
    t = run("adam(lr=0.01, clip_norm=50.0)", lambda ps: optim.Adam(ps, lr=0.01), clip=50.0)
    assert all(n < 50.0 for n in t.norms), t.norms  # no step was clipped


SCHEDULES: list[tuple[str, Callable[[list[Any]], Any], Callable[[Any], Any]]] = [
    ("sgd(lr=0.2, schedule=step(step_size=3, gamma=0.5))",
     lambda ps: optim.SGD(ps, lr=0.2), lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
    # 12 steps over t_max=4: down to eta_min and, like torch, back up again
    ("adam(lr=0.02, schedule=cosine(t_max=4, eta_min=0.002))",
     lambda ps: optim.Adam(ps, lr=0.02), lambda o: S.CosineAnnealingLR(o, T_max=4, eta_min=0.002)),
    ("adamw(lr=0.01, warmup=4)",
     lambda ps: optim.AdamW(ps, lr=0.01), lambda o: S.LambdaLR(o, lambda k: min(1.0, (k + 1) / 4))),
    ("sgd(lr=0.3, momentum=0.9, warmup=3, schedule=cosine(t_max=5))",
     lambda ps: optim.SGD(ps, lr=0.3, momentum=0.9),
     lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=1 / 3, total_iters=2),
                                  S.CosineAnnealingLR(o, T_max=5)], milestones=[3])),
    ("rmsprop(lr=0.01, warmup=2, schedule=step(step_size=2, gamma=0.3))",
     lambda ps: optim.RMSprop(ps, lr=0.01),
     lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=1 / 2, total_iters=1),
                                  S.StepLR(o, step_size=2, gamma=0.3)], milestones=[2])),
]


@pytest.mark.parametrize("optimizer,make,sched", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_lr_schedule_matches_torch_scheduler(optimizer: str, make: Callable[[list[Any]], Any],
                                             sched: Callable[[Any], Any]) -> None:
    run(optimizer, make, steps=12, sched=sched)


def test_fedprox_term_matches_torch_proximal_loss() -> None:
    run("sgd(lr=0.1, momentum=0.5)", lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5), mu=0.5)


def test_fedprox_then_clipping_then_adam_matches_torch() -> None:
    """The proximal gradient is part of what gets clipped, as with the term in torch's loss."""
    t = run("adam(lr=0.01, clip_norm=0.5)", lambda ps: optim.Adam(ps, lr=0.01), clip=0.5, mu=1.0)
    assert max(t.norms) > 0.5
