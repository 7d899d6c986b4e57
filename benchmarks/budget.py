"""The time-budget frontier: the best test accuracy a run gets in 2, 5, 10 and 20 minutes on this CPU.

    python benchmarks/budget.py                      # the default run (python -m agnews.train fit), all budgets
    python benchmarks/budget.py --minutes 2 5        # some budgets; measured ones are kept, the rest added later
    python benchmarks/budget.py --fp32               # every run in fp32 (the CPU without native bf16's path)

For each budget, three ways to spend it, each the product's own CLI (`fit`, then `test` of the run's kept
checkpoint on the official test split):
  (a) agnews:   fit --trainer.max_time B                  (agnews.training.budget sizes the schedule to the budget, and
                the run keeps its best val_acc checkpoint, a tie the later one)
  (b) stock:    fit --trainer.max_time B --trainer.max_epochs 2 --checkpoint.monitor val_loss, the budget callback
                off: Lightning's Timer stops the default 2-epoch schedule wherever it is, the default rule keeps
  (c) epochs:   the best of fit --trainer.max_epochs k (k = 1, 2, ...) whose training ends within B
Training time is Lightning's Timer's span (train start to train end, validation included); start-up and test
are outside the budget, as they are outside `max_time`. Results go to benchmarks/results/budget.json, keyed by
CPU; the table is printed as markdown and the frontier drawn to docs/budget_frontier.png.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "budget.json"
PLOT = ROOT / "docs" / "budget_frontier.png"


class TrainClock(L.Callback):
    """Lightning's Timer's span: from train start to train end (validation inside it)."""

    def on_train_start(self, trainer, pl_module):
        self.started = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.started


def hms(minutes: float) -> str:
    seconds = int(round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run(flags: list[str], budget_callback: bool = True) -> dict:
    from agnews.train import cli_main
    from agnews.training.budget import TimeBudget

    clock = TrainClock()
    root = tempfile.mkdtemp(prefix="agnews-budget-")
    active = TimeBudget.active
    if not budget_callback:
        TimeBudget.active = lambda self, trainer: False  # Lightning's stock max_time: only the Timer acts
    try:
        fitted = cli_main(["fit", *flags, "--trainer.default_root_dir", root], callbacks=[clock])
    finally:
        TimeBudget.active = active
    best = fitted.trainer.checkpoint_callback.best_model_path
    tested = cli_main(["test", "--ckpt_path", best, "--trainer.default_root_dir", root])
    return {
        "train_minutes": clock.seconds / 60,
        "steps": fitted.trainer.global_step,
        "epochs": fitted.trainer.global_step / max(1, fitted.trainer.num_training_batches),
        "test_acc": float(tested.trainer.callback_metrics["test_acc"]),
        "best_checkpoint": Path(best).name,
    }


def table(entry: dict, budgets: list[float]) -> str:
    lines = [
        "| budget | (a) agnews budget | minutes used | (b) stock max_time, 2-epoch schedule | (c) best fixed-epoch run within it |",
        "|---:|---:|---:|---:|---:|",
    ]
    epochs = entry.get("epochs", {})
    for minutes in budgets:
        row = entry.get("budgets", {}).get(str(minutes), {})
        a, b = row.get("agnews"), row.get("stock")
        fitting = [(k, r) for k, r in epochs.items() if r["train_minutes"] <= minutes]
        c = max(fitting, key=lambda kr: kr[1]["test_acc"]) if fitting else None
        cells = [
            f"{100 * a['test_acc']:.2f}%" if a else "-",
            f"{a['train_minutes']:.2f} ({100 * a['train_minutes'] / minutes:.1f}%)" if a else "-",
            f"{100 * b['test_acc']:.2f}% ({b['epochs']:.2f} epochs{', the ' + b['same_run_as'] + ' run' if 'same_run_as' in b else ''})"
            if b
            else "-",
            f"{100 * c[1]['test_acc']:.2f}% ({c[0]} epoch(s), {c[1]['train_minutes']:.1f} min)" if c else "none fits",
        ]
        lines.append(f"| {minutes:g} min | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(entry: dict, budgets: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, style in (("agnews", "o-"), ("stock", "s--")):
        points = [
            (m, 100 * r[name]["test_acc"]) for m in budgets if name in (r := entry.get("budgets", {}).get(str(m), {}))
        ]
        if points:
            ax.plot(
                *zip(*points, strict=True),
                style,
                label={"agnews": "(a) agnews budget", "stock": "(b) stock max_time"}[name],
            )
    epochs = sorted(entry.get("epochs", {}).items(), key=lambda kr: int(kr[0]))
    if epochs:
        ax.plot(
            [r["train_minutes"] for _, r in epochs],
            [100 * r["test_acc"] for _, r in epochs],
            "^:",
            label="(c) k epochs",
        )
    ax.set_xlabel("training minutes (validation included)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=list(range(1, 13)),
        help="(c): the fixed-epoch runs; a k whose pace-predicted time is over the largest budget is not run",
    )
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--again", action="store_true", help="measure again what is already in the results")
    parser.add_argument(
        "flags", nargs="*", help="fit flags for every run (after --), e.g. -- --config configs/offline.yaml"
    )
    args = parser.parse_args()

    from agnews.precision import cpu, cpu_bf16

    native = cpu_bf16()[0]
    key = f"{cpu().model} ({'native bf16' if native else 'no native bf16'}){' --fp32' if args.fp32 else ''}"
    key += f" {' '.join(args.flags)}" if args.flags else ""
    flags = [*args.flags, *(["--trainer.precision", "32-true"] if args.fp32 else [])]
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    entry = results.setdefault(key, {"budgets": {}, "epochs": {}})

    def save() -> None:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    for k in args.epochs:
        done = [(int(j), r) for j, r in entry["epochs"].items() if int(j) < k]
        if str(k) not in entry["epochs"] and done:
            j, r = max(done)
            if r["train_minutes"] * k / j > max(args.minutes):
                print(f"(c) {k} epochs: about {r['train_minutes'] * k / j:.1f} min at {j} epochs' pace; fits no budget")
                break
        if args.again or str(k) not in entry["epochs"]:
            entry["epochs"][str(k)] = run([*flags, "--trainer.max_epochs", str(k)])
            save()
        if entry["epochs"][str(k)]["train_minutes"] > max(args.minutes):
            break  # longer runs fit no budget asked for
    for minutes in args.minutes:
        row = entry["budgets"].setdefault(str(minutes), {})
        budget = ["--trainer.max_time", hms(minutes)]
        if args.again or "agnews" not in row:
            row["agnews"] = run([*flags, *budget])
            save()
        # A stock run that ended on its schedule, under a smaller budget, is this budget's run too: the Timer never
        # acted, and the command differs only in the budget it did not reach.
        ended = [
            (float(m), r["stock"])
            for m, r in entry["budgets"].items()
            if float(m) < minutes
            and "stock" in r
            and r["stock"]["epochs"] >= 2
            and r["stock"]["train_minutes"] < float(m)
        ]
        if not args.again and "stock" not in row and ended:
            m, stock = min(ended)
            row["stock"] = {**stock, "same_run_as": f"{m:g} min"}
            save()
        if args.again or "stock" not in row:
            # stock: Lightning's Timer on the default schedule and checkpoint rule (agnews' budget rule off too)
            stock = ["--trainer.max_epochs", "2", "--checkpoint.monitor", "val_loss", "--checkpoint.mode", "min"]
            row["stock"] = run([*flags, *budget, *stock], budget_callback=False)
            save()
    print(f"\n{key}\n")
    print(table(entry, sorted(float(m) for m in entry["budgets"])))
    plot(entry, sorted(float(m) for m in entry["budgets"]), key)
    print(f"\nresults: {RESULTS}; plot: {PLOT}")


if __name__ == "__main__":
    main()
