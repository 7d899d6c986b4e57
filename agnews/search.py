"""Hyperparameter search: `python -m agnews.search [--config C] [--trials N] [--trial_time T] [--time T] [-- fit flags]`.

Optuna's TPE sampler (seeded) proposes settings; each trial is an ordinary `fit` run (its own run folder, its
TensorBoard HPARAMS entry), sized by its own time budget (agnews.training.budget) so every trial gets the same CPU time.
The study lives in a SQLite file beside the runs, so running the command again continues it and several
processes can work on one study. Trials are pruned from their validation curve (the k-th validation of every
trial falls at the same share of its budget), the objective is the validation accuracy of the checkpoint the run
keeps (the test split never chooses), and Ctrl-C stops the running trial, keeps every finished one and queues the
interrupted settings for the next run. At the end: a leaderboard (printed and `leaderboard.md`) and `best.yaml`,
which `python -m agnews.train fit --config` takes.
"""

import argparse
import sys
import warnings

import optuna

from agnews.errors import AGNewsError
from agnews.tuning.study import Search


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
