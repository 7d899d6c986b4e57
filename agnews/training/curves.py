"""A run's training curves as a picture, read from its TensorBoard event files (the fit summary draws them;
`python -m agnews.plot` on demand)."""

from pathlib import Path

from agnews.checkpoints import LOG_ROOT, runs
from agnews.errors import AGNewsError

EPOCH_METRICS = ("train_loss_epoch", "val_loss", "train_acc", "val_acc")


def read_run(run: Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(x, value), ...]}: x is the epoch (1-based) for epoch metrics, the step for `train_loss_step`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(run.glob("events.out.tfevents.*")):
        raise AGNewsError(f"{run} holds no TensorBoard event files; pass a run folder such as lightning_logs/version_0")
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    epoch_at = {e.step: e.value for e in events.Scalars("epoch")} if "epoch" in tags else {}
    curves = {}
    for tag in EPOCH_METRICS:
        if tag in tags:
            curves[tag] = [(epoch_at.get(e.step, 0) + 1, e.value) for e in events.Scalars(tag)]
    if not any(curves.get(tag) for tag in ("val_loss", "train_loss_epoch")):
        raise AGNewsError(f"run {run} has no finished epoch yet (no val_loss or train_loss_epoch logged)")
    if "train_loss_step" in tags:
        curves["train_loss_step"] = [(e.step, e.value) for e in events.Scalars("train_loss_step")]
    return curves


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """TensorBoard's exponential moving average, debiased at the start."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_runs(runs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    data = {run: read_run(run) for run in runs}
    fig, (ax_loss, ax_acc, ax_step) = plt.subplots(1, 3, figsize=(16, 4.5))
    for color, (run, curves) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, data.items(), strict=False):
        label = run.name if len(runs) == 1 else str(run)
        for tag, axis, style in (
            ("train_loss_epoch", ax_loss, "--"),
            ("val_loss", ax_loss, "-"),
            ("train_acc", ax_acc, "--"),
            ("val_acc", ax_acc, "-"),
        ):
            if curves.get(tag):
                xs, ys = zip(*curves[tag], strict=False)
                axis.plot(xs, ys, style, marker="o", color=color, label=f"{label} {tag.replace('_epoch', '')}")
        if curves.get("train_loss_step"):
            xs, ys = zip(*curves["train_loss_step"], strict=False)
            ax_step.plot(xs, ys, color=color, alpha=0.25)
            ax_step.plot(xs, smooth(list(ys)), color=color, label=f"{label} train_loss (smoothed)")
    for axis, title, xlabel in (
        (ax_loss, "loss per epoch", "epoch"),
        (ax_acc, "accuracy per epoch", "epoch"),
        (ax_step, "training loss per step", "step"),
    ):
        axis.set_title(title)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axis.has_data():
            axis.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def latest_run(log_root: Path = LOG_ROOT) -> Path:
    """The newest run that trained (test-only runs log no training curves)."""

    for run in runs(log_root):
        if (run / "checkpoints").is_dir():
            return run
    raise AGNewsError(f"no training run under {log_root}/; run `python -m agnews.train fit` first or pass RUN_DIR")
