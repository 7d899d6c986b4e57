"""The Optuna study: each trial an ordinary `fit` through `cli_main`, pruned from its validation curve."""

import argparse
import io
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import lightning as L
import optuna
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from agnews.errors import AGNewsError
from agnews.train import cli_main
from agnews.training.budget import TimeBudget
from agnews.tuning.results import report, settings_base
from agnews.tuning.space import OBJECTIVE, build_space, contains, describe, installed_encoders, setting_of, suggest


class TrialPruning(Callback):
    """Reports the validation accuracy of every validation to Optuna and stops a trial its pruner gives up on.
    optuna-integration's PyTorchLightningPruningCallback reports at `current_epoch`, which repeats when
    validation runs within an epoch (as it does under a time budget); here the step is the validation's rank."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.validations = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for budget in (c for c in trainer.callbacks if isinstance(c, TimeBudget)):
            budget.per_epoch = False  # every trial validates as often, so the pruner compares like with like

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(OBJECTIVE)
        if trainer.sanity_checking or value is None:
            return
        self.validations += 1
        self.trial.report(float(value), self.validations)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after validation {self.validations} ({OBJECTIVE} {float(value):.4f})")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = trainer.checkpoint_callback.best_model_score
        if trainer.logger is not None and best is not None:
            trainer.logger.log_metrics({"hp_metric": float(best)}, step=trainer.global_step)  # TensorBoard HPARAMS


class TrialFailed(Exception):
    """A trial whose settings the run refused (its one-line error was printed); the search goes on."""


def resolved_settings(base: list[str]) -> dict:
    """The settings `fit` would run with these flags (the hub/offline choice included), as `--print_config`
    prints them; a user error in the flags stops here, before any trial."""
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            cli_main(["fit", *base, "--print_config"])
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    return yaml.safe_load(out.getvalue())


def first_trial(base: list[str], space: dict, settings: dict) -> dict:
    """Trial 0: the settings the base run resolves to (`settings`), with what the space fixes typed, as every trial
    types it: a typed batch keeps the configured learning rate, where the base run's own batch (null) scales it."""
    fixed = {flag: dist.choices[0] for flag, dist in space.values() if len(getattr(dist, "choices", ())) == 1}
    if fixed:
        settings = resolved_settings(base + [f"--{flag}={value}" for flag, value in fixed.items()])
    values = {name: setting_of(settings, flag) for name, (flag, _) in space.items()}
    return {name: value for name, value in values.items() if contains(space[name][1], value)}


class Search:
    def __init__(self, args: argparse.Namespace, fit_flags: list[str]):
        self.args = args
        self.folder = Path(args.root) / "lightning_logs" / "search" / args.name
        self.fit_flags = fit_flags
        self.base = (["--config", args.config] if args.config else []) + fit_flags
        self.started = time.monotonic()
        self.durations: list[float] = []

    def trial_flags(self, trial: optuna.Trial, params: dict) -> list[str]:
        flags = list(self.base)
        for name, value in params.items():
            flags += [f"--{self.space[name][0]}", str(value)]
        if self.args.trial_time:
            flags += ["--trainer.max_time", self.args.trial_time]
        return flags + [
            # the objective is the kept checkpoint's validation accuracy
            "--checkpoint.monitor", OBJECTIVE, "--checkpoint.mode", "max",
            "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.save_dir", str(self.folder.parent),
            "--trainer.logger.name", self.folder.name,
            "--trainer.logger.version", f"trial_{trial.number}",
        ]  # fmt: skip

    def objective(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.space)
        print(f"agnews: trial {trial.number}: {describe(params)}", file=sys.stderr, flush=True)
        pruning = TrialPruning(trial)
        start = time.monotonic()
        try:
            cli = cli_main(["fit", *self.trial_flags(trial, params)], callbacks=[pruning])
        except KeyboardInterrupt:  # Ctrl-C before the run's own handler was installed (start-up)
            trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            raise
        except SystemExit as stop:
            if stop.code in (130, 143):  # Ctrl-C / SIGTERM: the run stopped cleanly; run these settings again next time
                trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
                raise KeyboardInterrupt from None
            raise TrialFailed(f"trial {trial.number} failed (exit {stop.code}): see the line above") from None
        finally:
            self.durations.append(time.monotonic() - start)
            trial.set_user_attr("minutes", round((time.monotonic() - start) / 60, 2))
            trial.set_user_attr("run", str(self.folder / f"trial_{trial.number}"))
        best = cli.trainer.checkpoint_callback.best_model_score
        if best is None:
            raise TrialFailed(f"trial {trial.number} ran no validation, so it has no {OBJECTIVE}")
        trial.set_user_attr("steps", cli.trainer.global_step)
        return float(best)

    def out_of_time(self, study: optuna.Study, trial) -> None:
        if self.args.time is None:
            return
        left = self.args.time - (time.monotonic() - self.started)
        expected = max(self.durations[-3:]) if self.durations else 0.0
        if left < expected:
            print(
                f"agnews: search time budget: {left / 60:.1f} min left, a trial takes {expected / 60:.1f}: stopping",
                file=sys.stderr,
            )
            study.stop()

    def stop_when_nothing_works(self, study: optuna.Study, trial) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if trial.state == TrialState.FAIL and not done:
            raise AGNewsError(
                f"the first trial of study {self.args.name} failed; fix the run's settings (the error is above) before searching"
            )

    def run(self) -> int:
        args = self.args
        settings = resolved_settings(self.base)
        encoders = args.encoders or installed_encoders() or [settings["model"]["backbone"]]
        overrides = yaml.safe_load(Path(args.space).read_text()) if args.space else {}
        self.space = build_space(encoders, overrides or {}, teacher=bool(settings["data"].get("teacher")))
        self.folder.mkdir(parents=True, exist_ok=True)
        storage = RDBStorage(
            f"sqlite:///{self.folder / 'study.db'}",
            # a process that dies mid-trial (kill -9, power) leaves its trial to be failed and retried once
            heartbeat_interval=60,
            grace_period=180,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
        # seeded; shifted by the trials already run, so a resumed study does not repeat its first proposals
        seed = args.seed + sum(s.n_trials for s in optuna.get_all_study_summaries(storage) if s.study_name == args.name)
        study = optuna.create_study(
            study_name=args.name,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=args.startup_trials,
                # validations are reported from rank 1; Optuna prunes from step == n_warmup_steps on
                n_warmup_steps=args.warmup_validations + 1,
            ),
        )
        if not study.trials:  # trial 0: the base run's own settings, so the search starts from what it would beat
            study.set_user_attr("fit_flags", self.base)
            study.enqueue_trial(first_trial(self.base, self.space, settings))
        elif study.user_attrs.get("fit_flags") != self.base:
            raise AGNewsError(
                f"study {args.name} in {self.folder} was run with other fit settings ({' '.join(study.user_attrs.get('fit_flags', []))}); "
                f"give the same ones, or a new --name"
            )
        interrupted = False
        try:
            self.out_of_time(study, None)
            study.optimize(
                self.objective,
                catch=(TrialFailed,),
                callbacks=[
                    MaxTrialsCallback(args.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                    self.stop_when_nothing_works,
                    self.out_of_time,
                ],
            )
        except KeyboardInterrupt:
            interrupted = True
            print(
                "agnews: search interrupted: finished trials are kept in the study; run the same command to go on",
                file=sys.stderr,
            )
        report(study, self.space, self.folder, settings_base(args.config, self.fit_flags), args.trial_time)
        return 130 if interrupted else 0
