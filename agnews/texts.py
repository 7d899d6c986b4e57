"""Texts to classify, from the user's files: reading them (with clear errors) and turning them into token ids."""

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from agnews.errors import AGNewsError

INPUT_SUFFIXES = (".txt", ".csv", ".jsonl", ".parquet")


def _read_lines(path: Path) -> list[str]:
    texts = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                texts.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as err:
                raise AGNewsError(
                    f"{path} line {number} is not valid UTF-8 (byte {err.object[err.start]:#04x}); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
                ) from None
    return texts


def _text_column(path: Path, columns: list[str]) -> None:
    if "text" not in columns:
        raise AGNewsError(
            f"{path} has no 'text' column (columns: {', '.join(map(str, columns)) or 'none'}); name the column of texts 'text'"
        )


def read_texts(path: str | os.PathLike) -> list[str]:
    """Texts to classify: `.txt` one per line, or the `text` column of a `.csv`/`.jsonl`/`.parquet` file."""
    path = Path(path).expanduser()
    if path.suffix not in INPUT_SUFFIXES:
        raise AGNewsError(
            f"cannot read {path}: use a {', '.join(INPUT_SUFFIXES)} file (.txt: one text per line; others: a 'text' column)"
        )
    if not path.is_file():
        raise AGNewsError(f"input file {path} does not exist")
    if path.suffix == ".txt":
        return _read_lines(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several kinds for a file that is not parquet
            raise AGNewsError(f"cannot read {path} as parquet: {str(err).splitlines()[0]}") from None
        _text_column(path, table.column_names)
        values = table.column("text").to_pylist()
    else:
        lines = _read_lines(path)
        if path.suffix == ".csv":
            rows = list(csv.reader(lines))
            header = rows[0] if rows else []
            _text_column(path, header)
            at = header.index("text")
            values = [row[at] if at < len(row) else None for row in rows[1:]]
        else:
            values = []
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise AGNewsError(
                        f"{path} line {number} is not JSON ({err.msg}); write one JSON object per line"
                    ) from None
                if not isinstance(row, dict):
                    raise AGNewsError(
                        f"{path} line {number} is not a JSON object; write one object with a 'text' key per line"
                    )
                _text_column(path, list(row))
                values.append(row["text"])
    return ["" if v is None else str(v) for v in values]


def encode(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Token ids of `texts` in the layout of the tokenized cache (flat ids + lengths), truncated to max_length."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum()))
    return {
        "input_ids": torch.from_numpy(flat),
        "lengths": torch.from_numpy(lengths),
        "labels": torch.full((len(ids),), -1, dtype=torch.long),  # unknown
    }


def blank_rows(texts: Sequence[str]) -> list[int]:
    return [i for i, t in enumerate(texts) if not t.strip()]


def describe_rows(rows: Sequence[int], limit: int = 5) -> str:
    """Row ids (as in the predictions file) for messages, elided after `limit`."""
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
