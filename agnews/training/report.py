"""The test report: what `test` measured, per class, written next to the checkpoint it evaluated."""

import os

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix


def run_hparams(pl_module: L.LightningModule, trainer: L.Trainer) -> dict:
    """The run's settings as plain scalars for TensorBoard's HPARAMS tab (the encoder config is left out)."""
    params = {
        f"model/{k}": v for k, v in pl_module.hparams_initial.items() if k not in ("backbone_config", "class_names")
    }
    if trainer.datamodule is not None:
        params.update({f"data/{k}": v for k, v in trainer.datamodule.hparams.items() if k != "tokenizer"})
    params["trainer/precision"] = str(trainer.precision)
    params["seed"] = run_seed()
    return params


def run_seed() -> int | None:
    """The seed `seed_everything` set for this run (LightningCLI also writes it to the run's config.yaml)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def log_to_tensorboard(logger: TensorBoardLogger, pl_module, report: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    names = report["confusion_matrix"]["labels"]
    fig, _ = MulticlassConfusionMatrix(len(names)).plot(results["confusion"].long(), labels=names)
    fig.set_size_inches(6, 6)
    logger.experiment.add_figure("test_confusion_matrix", fig, close=True)
    logger.log_hyperparams(
        run_hparams(pl_module, pl_module.trainer),
        {"hp_test_acc": report["accuracy"], "hp_test_loss": report["loss"], "hp_test_f1": report["macro_f1"]},
    )


def build_report(pl_module, trainer, results: dict, seconds: float) -> dict:
    names = pl_module.label_names
    confusion = results["confusion"].long()
    datamodule = trainer.datamodule
    metrics = trainer.callback_metrics
    return {
        "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
        "encoder": pl_module.hparams.get("backbone"),
        "chosen_by": pl_module.hparams.get("chosen_by"),
        "dataset": getattr(datamodule, "hparams", {}).get("dataset") if datamodule else None,
        "teacher": getattr(datamodule, "hparams", {}).get("teacher") if datamodule else None,  # distilled from
        "split": "test",
        "rows": int(confusion.sum()),
        "seconds": round(seconds, 2),
        "accuracy": float(confusion.trace() / confusion.sum().clamp(min=1)),
        "balanced_accuracy": float(results["recall"].mean()),
        "loss": float(metrics["test_loss"]),
        "macro_f1": float(results["macro_f1"]),
        "classes": [
            {
                "name": name,
                "precision": float(results["precision"][i]),
                "recall": float(results["recall"][i]),
                "f1": float(results["f1"][i]),
                "support": int(confusion[i].sum()),
            }
            for i, name in enumerate(names)
        ],
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "labels": names,
            "counts": confusion.tolist(),
        },
    }


def render_markdown(report: dict) -> str:
    names = report["confusion_matrix"]["labels"]
    lines = [
        "# Test report",
        "",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- encoder: `{report['encoder']}`" + (f" ({report['chosen_by']})" if report.get("chosen_by") else ""),
        f"- data: `{report['dataset']}`, split `{report['split']}`, {report['rows']:,} rows, {report['seconds']:.1f} s",
        *([f"- distilled from the teacher file `{report['teacher']}`"] if report.get("teacher") else []),
        f"- accuracy **{100 * report['accuracy']:.2f}%**, average loss {report['loss']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
        f"balanced accuracy {100 * report['balanced_accuracy']:.2f}%",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *(
            f"| {c['name']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']:,} |"
            for c in report["classes"]
        ),
        "",
        "Confusion matrix (rows: true class, columns: predicted class):",
        "",
        "| true \\ predicted | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
        *(
            f"| {name} | " + " | ".join(f"{n:,}" for n in row) + " |"
            for name, row in zip(names, report["confusion_matrix"]["counts"], strict=False)
        ),
        "",
    ]
    return "\n".join(lines)
