"""The `predict` subcommand's output: `PredictionWriter` and the checked, atomically written prediction files."""

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from agnews.atomic import atomic_file
from agnews.data.batching import in_original_order
from agnews.errors import AGNewsError
from agnews.inference.classifier import quantize_int8
from agnews.precision import is_bf16

OUTPUT_SUFFIXES = (".csv", ".jsonl")


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse, before any work, an output that could not be written or would silently replace a file."""
    path = Path(path).expanduser()
    if path.suffix not in OUTPUT_SUFFIXES:
        raise AGNewsError(f"output {path}: use a .csv or .jsonl file name")
    if not path.parent.is_dir():
        raise AGNewsError(f"output folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise AGNewsError(f"output {path} is a folder; name a file")
    if path.exists() and not overwrite:
        raise AGNewsError(f"output {path} exists; pass --prediction.overwrite true to replace it, or another file name")
    return path


def write_predictions(
    path: Path,
    class_names: Sequence[str],
    probs: torch.Tensor,
    ids: Sequence,
    texts: Sequence[str] | None = None,
    true_labels: Sequence[int] | None = None,
) -> None:
    """One row per input row, in input order: id, text, label, score, one probability per class (empty for
    rows not predicted). Written to a temporary file and renamed, so a failed run leaves no partial output."""
    records = []
    for i, row in enumerate(probs):
        record = {"id": ids[i]}
        if texts is not None:
            record["text"] = texts[i]
        if true_labels is not None:
            record["true_label"] = class_names[int(true_labels[i])]
        done = not row.isnan().any()
        best = int(row.argmax()) if done else None
        record["label"] = class_names[best] if done else None
        record["score"] = round(float(row[best]), 6) if done else None
        record["probs"] = (
            {name: round(float(p), 6) for name, p in zip(class_names, row, strict=False)} if done else None
        )
        records.append(record)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(f)
            head = [k for k in (records[0] if records else {"id": 0, "label": 0, "score": 0}) if k != "probs"]
            writer.writerow(head + [f"prob_{name}" for name in class_names])
            for record in records:
                probs_ = record["probs"] or {}
                writer.writerow(
                    [("" if record[k] is None else record[k]) for k in head] + [probs_.get(n, "") for n in class_names]
                )


class PredictionWriter(BasePredictionWriter):
    """Writes `predict`'s output file, in input order, and applies the int8 fast path if asked."""

    def __init__(self, output: str | None = None, overwrite: bool = False, int8: bool = False):
        """
        Args:
            output: the predictions file, `.csv` or `.jsonl`; its folder must exist.
            overwrite: replace `output` if it exists.
            int8: dynamic int8 quantization of the linear layers (CPU; see docs/performance.md, Inference).
        """
        super().__init__(write_interval="epoch")
        self.output = output
        self.overwrite = overwrite
        self.int8 = int8
        self._path: Path | None = None  # the checked output file, set in setup

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if self.output is None:
            raise AGNewsError("predict writes to a file: pass --prediction.output FILE (.csv or .jsonl)")
        self._path = check_output(self.output, self.overwrite)
        if trainer.world_size > 1:
            raise AGNewsError("predict runs in one process; leave --trainer.devices at 1")
        if self.int8 and is_bf16(trainer.precision):
            raise AGNewsError(
                "choose one fast path: --prediction.int8 true with --trainer.precision 32-true, or bf16 alone"
            )

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.int8:
            quantize_int8(pl_module.model)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        dm = trainer.datamodule
        names = pl_module.label_names
        if predictions:
            found = in_original_order(predictions)["probs"]
        else:
            found = torch.empty(0, len(names))
        if dm.predict_texts is not None:  # a file of texts: every input row, blank ones unpredicted
            probs = torch.full((len(dm.predict_texts), len(names)), float("nan"))
            probs[dm.predict_rows] = found
            write_predictions(self._path, names, probs, range(len(probs)), texts=dm.predict_texts)
        else:  # the data set's test split: row ids and true labels
            rows = dm.test_set.rows
            write_predictions(self._path, names, found, rows.tolist(), true_labels=dm.test_set.labels[rows])
        print(f"agnews: {len(found):,} predictions written to {self.output}", flush=True)
