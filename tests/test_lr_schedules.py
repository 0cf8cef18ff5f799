"""Learning-rate schedules and the horizon a --time-budget run fixes for them."""

import json
import math

import pytest
from conftest import FAMILY_RUN, train_argv

from ddlm.checkpoint import CheckpointDir
from ddlm.cli import main
from ddlm.lr_schedules import Constant, Cosine, warmup_steps


def test_constant_is_the_old_warm_up():
    assert [Constant().factor(s, 4, None) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert Constant().factor(3, 4, 1000) == 1.0  # a long horizon changes nothing


def test_a_short_run_warms_up_over_a_tenth_of_its_steps():
    assert warmup_steps(200, 150) == 15 and warmup_steps(200, 10_000) == 200 and warmup_steps(200, 5) == 1
    assert warmup_steps(200, None) == 200  # before the horizon is known
    assert [Constant().factor(s, 200, 150) for s in (0, 13, 14, 100)] == [1 / 15, 14 / 15, 1.0, 1.0]
    assert Cosine().factor(14, 200, 150) == pytest.approx(1.0)


def test_cosine_warms_up_then_falls_to_its_floor_at_the_horizon():
    cosine, horizon, warmup = Cosine(), 1000, 200
    warm = horizon // 10  # at most a tenth of the run warms up
    assert cosine.factor(0, warmup, horizon) == pytest.approx(1 / warm)
    assert cosine.factor(warm - 1, warmup, horizon) == pytest.approx(1.0)
    assert cosine.factor(warm, warmup, horizon) == pytest.approx(1.0)
    middle = warm + (horizon - warm) // 2
    assert cosine.factor(middle, warmup, horizon) == pytest.approx((1 + cosine.floor) / 2, abs=2e-3)
    assert cosine.factor(horizon, warmup, horizon) == pytest.approx(cosine.floor)
    assert cosine.factor(5 * horizon, warmup, horizon) == pytest.approx(cosine.floor)
    after = [cosine.factor(s, warmup, horizon) for s in range(warm, horizon + 1)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    # a long run keeps its warm-up; without a horizon yet, the rate warms up as the constant one
    assert cosine.factor(99, 200, 100_000) == pytest.approx(0.5)
    assert cosine.factor(99, 200, None) == Constant().factor(99, 200, None)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_steps_run_follows_the_cosine(family, tmp_path):
    run = tmp_path / "r"
    argv = train_argv(family, run, steps=40, log_every=1, lr_schedule="cosine", lr=0.002, samples=0, **FAMILY_RUN)
    assert main(argv) == 0
    logged = {m["step"]: m["lr"] for m in metrics(run) if "lr" in m}
    for step, lr in logged.items():  # the record of step s logs the rate of its last update, step s - 1
        assert lr == pytest.approx(0.002 * Cosine().factor(step - 1, 200, 40)), step
    # 4 warm-up steps (a tenth of 40), then the cosine over the 36 after them
    assert logged[40] == pytest.approx(0.002 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 35 / 36))))


def test_time_budget_fixes_the_horizon_once_and_resume_keeps_it(family, tmp_path):
    run = tmp_path / "r"
    flags = dict(time_budget=0.1, lr_schedule="cosine", samples=0, eval_every=10_000, **FAMILY_RUN)
    assert main(train_argv(family, run, **flags)) == 0
    events = [m for m in metrics(run) if m.get("event") == "learning-rate horizon fixed"]
    assert len(events) == 1 and events[0]["step"] == 10 and events[0]["horizon"] >= 10
    steps = CheckpointDir(run).steps()
    assert CheckpointDir(run).load(steps[-1]).meta["horizon"] == events[0]["horizon"]
    assert main(train_argv(family, run, resume=True, **flags)) == 0
    assert len([m for m in metrics(run) if m.get("event") == "learning-rate horizon fixed"]) == 1
