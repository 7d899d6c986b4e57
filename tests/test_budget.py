import time

import pytest

from agnews.budget import LinearSchedule, plan
from agnews.train import cli_main
from tests.conftest import fit_args


def test_the_plan_fills_the_budget_with_training_and_validation():
    # 10 minutes, 0.5 s a step, 10 s a validation: 5 validations (50 s), 1,100 steps, one every 220
    p = plan(600, 0.5, 10)
    assert (p.total_steps, p.val_every, p.validations) == (1100, 220, 5)
    assert p.total_steps * 0.5 + p.validations * 10 <= 600
    # validation at most a quarter of the budget: one pass when a pass is expensive
    p = plan(100, 0.1, 20)
    assert (p.total_steps, p.val_every, p.validations) == (800, 800, 1)
    # a typed max_epochs caps it: the earlier of the two
    p = plan(600, 0.5, 10, max_steps=300)
    assert (p.total_steps, p.val_every) == (300, 60)


def test_the_schedule_warms_up_then_reaches_zero_at_the_last_step_and_resizes():
    schedule = LinearSchedule(total=100, warmup=10)
    assert schedule(0) == 0 and schedule(5) == 0.5 and schedule(10) == 1.0 and schedule(100) == 0.0
    schedule.resize(200, 20)
    assert schedule(20) == 1.0 and schedule(110) == pytest.approx(0.5) and schedule(200) == 0.0


def test_a_budgeted_fit_ends_on_time_with_the_rate_at_zero(tiny_bert, data_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    cli = cli_main(["fit", *fit_args(tiny_bert, data_dir, tmp_path, "--trainer.max_time", "00:00:00:12")])
    seconds = time.perf_counter() - start
    budget = next(c for c in cli.trainer.callbacks if type(c).__name__ == "TimeBudget")
    assert "agnews: budget 0:12 -> " in caplog.text and budget.plan is not None
    assert cli.trainer.global_step == budget.plan.total_steps  # the budget, not max_epochs, ended the run
    assert cli.trainer.current_epoch > 2  # more than the default 2 epochs fit in 12 s on a tiny model
    assert cli.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == 0.0
    assert seconds < 12 * 1.5 + 10  # start-up is outside the budget; the goal's 5% is measured by hand
