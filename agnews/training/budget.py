"""A run sized to its time budget (`--trainer.max_time DD:HH:MM:SS`, Lightning's own flag).

Lightning's `max_time` only stops the loop: a schedule sized from `max_epochs` would end mid-way at a high rate.
Here the budget decides the run's length: after the first optimizer steps the pace is measured, the total steps
are sized so that training plus validation end at the budget, warm-up and the linear decay are resized to reach
zero at the last step, and validation (so the best checkpoint) comes every `val_every` steps. Each validation
re-checks the pace (the machine's speed drifts) and resizes what is left. Start-up and `test` are outside the
budget, as they are outside Lightning's Timer.
"""

import time
from dataclasses import dataclass

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.utilities import rank_zero_info

from agnews.internals import set_training_length


class LinearSchedule:
    """Linear warm-up to the peak rate, then linear decay to zero at `total` steps; resizable while it runs. A
    callable object, so LambdaLR keeps its fields in the checkpoint."""

    def __init__(self, total: int, warmup: int):
        self.total, self.warmup = total, warmup

    def resize(self, total: int, warmup: int) -> None:
        self.total, self.warmup = max(1, total), warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


@dataclass(frozen=True)
class Plan:
    total_steps: int
    val_every: int
    validations: int


def plan(
    seconds: float,
    step_seconds: float,
    val_seconds: float,
    max_steps: int | None = None,
    validations: int = 5,
    steps_per_epoch: int | None = None,
):
    """Optimizer steps, and validations every `val_every` of them, that fill `seconds`: at most a quarter of the
    budget goes to validation, at most one validation per epoch planned (under a linear decay to zero the models
    of a short run's first half are not the ones to keep), and the last step is a validation step."""
    validations = max(1, min(validations, int(0.25 * seconds / max(val_seconds, 1e-9))))
    total = int((seconds - validations * val_seconds) / step_seconds)
    if steps_per_epoch and round(total / steps_per_epoch) < validations:
        validations = max(1, round(total / steps_per_epoch))
        total = int((seconds - validations * val_seconds) / step_seconds)
    if max_steps is not None and max_steps > 0:
        total = min(total, max_steps)
    val_every = max(1, total // validations)
    return Plan(total_steps=max(val_every * validations, 1), val_every=val_every, validations=validations)


def clock(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


class TimeBudget(Callback):
    """Sizes the run to `--trainer.max_time` (inactive without it): the pace is measured over `measure` optimizer
    steps, and re-checked every tenth of the run and after each validation."""

    def __init__(self, measure: int = 20, validations: int = 5, per_epoch: bool = True):
        # per_epoch: at most one validation per planned epoch (False: always `validations`, so that the k-th
        # validation of every run falls at the same share of its budget, as a search's pruner compares them)
        self.measure, self.validations, self.per_epoch = measure, validations, per_epoch
        self.plan: Plan | None = None
        self._budget = 0.0
        self._val_seconds = 0.0  # one validation pass, with the checkpoints written after it
        self._val_spent = 0.0  # all validation so far
        self._val_start = 0.0
        self._val_open = False  # a validation ended and its checkpoint writes are still on its clock
        self._started = 0.0
        # (clock, step, validation so far) the pace counts from; first set after the first step: warm-up left out
        self._window: tuple[float, int, float] | None = None
        self._pace = 0.0  # seconds per step, the last measured
        self._next_check = 0
        self._cadence = 1  # the validation interval first planned: re-plans stay near it

    @staticmethod
    def _timer(trainer: L.Trainer) -> Timer | None:
        return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)

    def active(self, trainer: L.Trainer) -> bool:
        return self._timer(trainer) is not None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.active(trainer):
            self._budget = self._timer(trainer).time_remaining() or 0.0
            self._started = time.perf_counter()

    def _step_seconds(self, trainer) -> float:
        """Seconds a step over the steps since the last re-check (validation left out): the pace now, not the
        run's average, which lags behind a machine that slowed down and keeps the first steps' one-off costs."""
        clock_at, step, val_spent = self._window
        steps = trainer.global_step - step
        if steps >= self.measure or not self._pace:
            self._pace = (time.perf_counter() - clock_at - (self._val_spent - val_spent)) / max(1, steps)
            self._window = (time.perf_counter(), trainer.global_step, self._val_spent)
        return self._pace

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.active(trainer):
            return
        if self.plan is not None and trainer.global_step >= self.plan.total_steps:
            trainer.should_stop = True  # Lightning validates on a requested stop: the final model is scored
            return
        if self._window is None:
            if trainer.global_step >= 1:
                self._window = (time.perf_counter(), trainer.global_step, 0.0)
            return
        if self.plan is None and trainer.global_step - self._window[1] >= self.measure:
            step_seconds = self._step_seconds(trainer)
            # until a validation has run: a forward pass costs about a third of a training step, per row
            val_rows = len(getattr(trainer.datamodule, "val_set", None) or [])
            rows_per_step = trainer.datamodule.hparams.batch_size * trainer.accumulate_grad_batches
            self._val_seconds = step_seconds / 3 * val_rows / max(1, rows_per_step)
            self._replan(trainer, pl_module, step_seconds, announce=True)
        elif self.plan is not None and trainer.global_step >= self._next_check:
            self._replan(trainer, pl_module, self._step_seconds(trainer))

    def _replan(self, trainer, pl_module, step_seconds: float, announce: bool = False) -> None:
        done = trainer.global_step
        if self.plan is not None and self.plan.total_steps - done < self.measure:
            return  # the last few steps: nothing left to correct
        # a reserve of 2% (at least a few steps, and half a second for a checkpoint write or a collector pause): the
        # plan must end before Lightning's Timer cuts it mid-decay
        reserve = max(0.02 * self._budget, 3 * step_seconds, 0.5)
        left = self._budget - (time.perf_counter() - self._started) - reserve
        if self.plan is None:
            epoch = trainer.num_training_batches // trainer.accumulate_grad_batches if self.per_epoch else None
            first = plan(left, step_seconds, self._val_seconds, None, self.validations, epoch)
            target, self._cadence = done + first.total_steps, first.val_every
        else:
            validations_left = (self.plan.total_steps - done) // self._cadence + 1  # the final one included
            target = done + int((left - validations_left * self._val_seconds) / step_seconds)
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:  # a typed max_epochs: the earlier of the two
            target = min(target, trainer.max_epochs * trainer.num_training_batches // trainer.accumulate_grad_batches)
        # the cadence stays as first planned (Lightning validates at multiples of it); the last step validates too
        val_every, total = self._cadence, max(target, done + 1)
        self.plan = Plan(total, val_every, max(1, total // val_every))
        self._next_check = done + max(self.measure, total // 10)
        pl_module.lr_schedule.resize(total, int(pl_module.hparams.warmup_ratio * total))
        set_training_length(trainer, total, val_every * trainer.accumulate_grad_batches)
        if announce:
            epochs = total * trainer.accumulate_grad_batches / trainer.num_training_batches
            rank_zero_info(
                f"agnews: budget {clock(self._budget)} -> {total:,} steps, {epochs:.1f} epochs, validation every "
                f"{val_every:,} steps (measured {step_seconds:.2f} s per step; start-up and test are outside the budget)"
            )

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.active(trainer) or self.plan is None:
            return
        # the checkpoints written after a validation (Lightning runs ModelCheckpoint's hooks last) are part of its
        # cost, not of the steps': it is closed at the next training batch
        self._val_open = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._val_open:
            return
        self._val_open = False
        self._val_seconds = time.perf_counter() - self._val_start
        self._val_spent += self._val_seconds
        if trainer.global_step < self.plan.total_steps:
            self._replan(trainer, pl_module, self._step_seconds(trainer))
