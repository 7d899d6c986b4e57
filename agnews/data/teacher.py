"""A teacher's outputs for distillation: its logits for every row of a training pool, in one small parquet file
keyed by the rows it was made from and the checkpoint that made it (`python -m agnews.distill teacher`).

The DataModule (`--data.teacher FILE`) refuses a file made from other rows, so a teacher can never be read
against the wrong texts; the checkpoint of a distilled run records which file it learned from.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from agnews.atomic import atomic_file
from agnews.errors import AGNewsError
from agnews.hashing import sha256

FORMAT = 1
META_KEY = b"agnews_teacher"


def rows_fingerprint(texts: Sequence[str], labels: Sequence[int]) -> str:
    """SHA-256 of the rows in order (text and label): any edit, addition, removal or reordering changes it."""
    return sha256(*(f"{int(label)}\t{text}\0" for text, label in zip(texts, labels, strict=True)))


@dataclass(frozen=True)
class Teacher:
    logits: torch.Tensor  # [rows, classes], float32, in the pool's row order
    labels: torch.Tensor  # [rows], the labels the rows had
    meta: dict  # rows (fingerprint), teacher (checkpoint SHA-256), backbone, dataset, precision, command, ...

    @property
    def identity(self) -> dict:
        """What a distilled run's checkpoint records of the file it learned from."""
        keys = ("rows", "teacher", "backbone", "dataset")
        return {"file": self.meta.get("file"), **{k: self.meta.get(k) for k in keys}}

    def accuracy(self) -> float:
        return float((self.logits.argmax(-1) == self.labels).float().mean())


def write_teacher(path: str | Path, logits: torch.Tensor, labels: torch.Tensor, meta: dict) -> Path:
    """Write the file whole or not at all (temporary file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if logits.ndim != 2 or len(logits) != len(labels) or not torch.isfinite(logits).all():
        raise AGNewsError(f"teacher logits must be one finite row per label (got {tuple(logits.shape)})")
    table = pa.table(
        {
            "label": pa.array(labels.to(torch.int64).numpy()),
            "logits": pa.FixedSizeListArray.from_arrays(
                pa.array(logits.to(torch.float32).flatten().numpy()), logits.shape[1]
            ),
        }
    )
    table = table.replace_schema_metadata({META_KEY: json.dumps({"format": FORMAT, **meta}, sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_teacher(path: str | Path) -> Teacher:
    import pyarrow.parquet as pq

    path = Path(path).expanduser()
    fix = "make one with `python -m agnews.distill teacher --ckpt_path CKPT`, or pass --data.teacher null"
    if not path.is_file():
        raise AGNewsError(f"teacher file {path} does not exist; {fix}")
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[META_KEY])
        labels = torch.from_numpy(table.column("label").to_numpy().copy())
        column = table.column("logits").combine_chunks()
        width = column.type.list_size
        logits = torch.from_numpy(column.flatten().to_numpy().copy()).reshape(-1, width)
    except Exception as err:  # not parquet, truncated, or another parquet file: all mean "not a teacher file"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AGNewsError(f"{path} is not a readable agnews teacher file ({reason}); {fix}") from None
    if meta.get("format") != FORMAT:
        raise AGNewsError(f"teacher file {path} has format {meta.get('format')}, not {FORMAT}; {fix}")
    return Teacher(logits=logits, labels=labels, meta={**meta, "file": str(path)})


def check_rows(teacher: Teacher, rows: str, labels: torch.Tensor, class_names: Sequence[str]) -> None:
    """Refuse a teacher made from other rows than the pool about to be trained on, or for other classes."""
    where = teacher.meta["file"]
    remake = (
        "make one for these rows with `python -m agnews.distill teacher --ckpt_path CKPT`, or pass --data.teacher null"
    )
    if len(teacher.labels) != len(labels) or teacher.meta.get("rows") != rows:
        raise AGNewsError(
            f"teacher file {where} was made from other rows ({len(teacher.labels):,} rows of "
            f"{teacher.meta.get('dataset')}) than this training data ({len(labels):,} rows); {remake}"
        )
    if not torch.equal(teacher.labels, labels.to(teacher.labels.dtype)):  # the fingerprint covers this: belt and braces
        raise AGNewsError(f"teacher file {where} has other labels than this training data; {remake}")
    if teacher.logits.shape[1] != len(class_names):
        raise AGNewsError(
            f"teacher file {where} scores {teacher.logits.shape[1]} classes, the data has {len(class_names)}; {remake}"
        )


def teacher_for_rows(path: str, split: dict) -> Teacher:
    """The teacher file a fit learns from, checked against the cached train split's rows and said once."""
    teacher = read_teacher(path)
    check_rows(teacher, split.get("rows"), split["labels"], split["class_names"])
    rank_zero_info(
        f"agnews: distilling from teacher file {path} ({teacher.meta.get('backbone')}, "
        f"{teacher.accuracy():.2%} on these rows)"
    )
    return teacher
