import time
from datetime import timedelta
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Timer

from agnews.train import cli_main
from agnews.training import budget as budget_module
from agnews.training.budget import LinearSchedule, TimeBudget, plan
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
    # at most one validation per planned epoch: 2 minutes at 0.2 s a step and 306 steps an epoch is 1.9 epochs
    p = plan(120, 0.2, 2, steps_per_epoch=306)
    assert (p.total_steps, p.val_every, p.validations) == (580, 290, 2)
    assert plan(120, 0.2, 2, steps_per_epoch=1000).validations == 1
    assert plan(600, 0.2, 2, steps_per_epoch=306).validations == 5  # 9.6 epochs: the cap


def test_the_schedule_warms_up_then_reaches_zero_at_the_last_step_and_resizes():
    schedule = LinearSchedule(total=100, warmup=10)
    assert schedule(0) == 0 and schedule(5) == 0.5 and schedule(10) == 1.0 and schedule(100) == 0.0
    schedule.resize(200, 20)
    assert schedule(20) == 1.0 and schedule(110) == pytest.approx(0.5) and schedule(200) == 0.0


@pytest.mark.timing
def test_a_budgeted_fit_ends_on_time_with_the_rate_at_zero(tiny_bert, data_dir, tmp_path, monkeypatch, caplog, capsys):
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
    # the checkpoint rule of a budgeted run, said at its start: the best validation accuracy, a tie the later model
    assert "budget run: the checkpoint kept is the best val_acc (max; a tie keeps the later)" in capsys.readouterr().err
    checkpoint = cli.trainer.checkpoint_callback
    assert (checkpoint.monitor, checkpoint.mode) == ("val_acc", "max")
    history = next(c for c in cli.trainer.callbacks if type(c).__name__ == "FitSummary").val_history
    best = max(v["val_acc"] for v in history)
    kept = torch.load(checkpoint.best_model_path, weights_only=True, map_location="cpu")["global_step"]
    assert kept == max(v["step"] for v in history if v["val_acc"] == best)


class _Validations(L.Callback):
    """Logs a scripted score at each validation."""

    def __init__(self, scores):
        self.scores = list(scores)

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("val_score", 0.0 if trainer.sanity_checking else self.scores.pop(0))


def test_a_tie_keeps_the_later_model_under_a_typed_rule_too(tiny_bert, data_dir, tmp_path):
    # scores 0.5, 0.75, 0.75, 0.6: the third validation ties the second and is kept
    flags = fit_args(tiny_bert, data_dir, tmp_path, "--trainer.max_epochs", "4", "--checkpoint.monitor", "val_score")
    flags += ["--checkpoint.mode", "max", "--checkpoint.filename", "{epoch}-{step}"]
    cli = cli_main(["fit", *flags], callbacks=[_Validations([0.5, 0.75, 0.75, 0.6])])
    kept = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True, map_location="cpu")
    assert kept["epoch"] == 2 and float(cli.trainer.checkpoint_callback.best_model_score) == 0.75


class _Timer(Timer):
    def __init__(self, seconds: float):
        super().__init__(duration=timedelta(seconds=seconds))
        self.seconds = seconds

    def time_remaining(self, stage=None) -> float:
        return self.seconds


def _simulate(monkeypatch, budget_seconds, step_seconds, val_seconds, max_epochs=-1, write_seconds=0.0):
    """Drives TimeBudget as Lightning's loop does, on a patched clock: steps cost `step_seconds(step)`,
    validations `val_seconds` and then `write_seconds` of checkpoint writes (ModelCheckpoint's hooks run after
    the other callbacks'), at the cadence the budget set, and once more when it asks the run to stop."""
    now = [0.0]
    monkeypatch.setattr(budget_module.time, "perf_counter", lambda: now[0])
    epoch_loop = SimpleNamespace(max_steps=-1)
    datamodule = SimpleNamespace(val_set=range(1000), hparams=SimpleNamespace(batch_size=32))
    trainer = SimpleNamespace(
        callbacks=[_Timer(budget_seconds)], global_step=0, datamodule=datamodule, accumulate_grad_batches=1,
        max_epochs=max_epochs, num_training_batches=300, fit_loop=SimpleNamespace(epoch_loop=epoch_loop),
        check_val_every_n_epoch=1, val_check_batch=300, sanity_checking=False, should_stop=False,
    )  # fmt: skip
    schedule = LinearSchedule(total=600, warmup=60)
    module = SimpleNamespace(lr_schedule=schedule, hparams=SimpleNamespace(warmup_ratio=0.1))
    callback = TimeBudget()
    callback.on_train_start(trainer, module)

    def validate():
        callback.on_validation_start(trainer, module)
        now[0] += val_seconds
        callback.on_validation_end(trainer, module)
        now[0] += write_seconds

    while not trainer.should_stop and trainer.global_step < 100_000:
        callback.on_train_batch_start(trainer, module, None, trainer.global_step)
        now[0] += step_seconds(trainer.global_step)
        trainer.global_step += 1
        callback.on_train_batch_end(trainer, module, None, None, trainer.global_step - 1)
        if trainer.should_stop or (callback.plan and trainer.global_step % trainer.val_check_batch == 0):
            validate()
    return now[0], trainer, callback, schedule


def test_the_budget_ends_within_5_percent_and_follows_a_drifting_pace(monkeypatch):
    # steady: 0.5 s a step, 8 s a validation, 10 minutes
    seconds, trainer, callback, schedule = _simulate(monkeypatch, 600, lambda step: 0.5, 8.0)
    assert 0.95 * 600 <= seconds <= 600
    assert trainer.global_step == callback.plan.total_steps == schedule.total and schedule(trainer.global_step) == 0.0
    assert trainer.check_val_every_n_epoch is None and callback.plan.validations >= 4
    # the machine slows to half speed a third of the way in: the rest of the run is resized, still on time
    seconds, trainer, callback, schedule = _simulate(monkeypatch, 600, lambda step: 0.5 if step < 400 else 1.0, 8.0)
    assert 0.95 * 600 <= seconds <= 600 and trainer.global_step == schedule.total
    # a typed max_epochs that ends first: the earlier of the two (2 epochs of 300 steps)
    seconds, trainer, callback, schedule = _simulate(monkeypatch, 600, lambda step: 0.5, 8.0, max_epochs=2)
    assert trainer.global_step == schedule.total == 600 and seconds < 0.95 * 600


def test_checkpoint_writes_count_as_validation_not_as_steps(monkeypatch):
    # 0.2 s a step, validations of 2 s each followed by 3 s of checkpoint writes, 10 minutes (10 epochs of 300)
    seconds, trainer, callback, schedule = _simulate(monkeypatch, 600, lambda step: 0.2, 2.0, write_seconds=3.0)
    assert 0.95 * 600 <= seconds <= 600 and trainer.global_step == schedule.total
    assert callback._val_seconds == pytest.approx(5.0)  # the pass and its writes, not the pass alone
    assert callback._pace == pytest.approx(0.2)  # the pace the last re-plan used: the writes did not slow it
