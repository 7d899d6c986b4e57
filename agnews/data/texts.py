"""Texts to classify, from the user's files: reading them (with clear errors) and turning them into token ids."""

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

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
            try:
                rows = list(csv.reader(lines))
            except csv.Error as err:  # a stray carriage return or NUL inside a field, say
                raise AGNewsError(f"cannot read {path} as CSV: {err}; save it as plain CSV (or use .txt)") from None
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


def encode_file(path: str, tokenizer, max_length: int) -> tuple[list[str], list[int], dict[str, torch.Tensor]]:
    """A file of texts to predict: every row (blank ones included, said once), the rows that are not blank, and
    their token ids."""
    texts = read_texts(path)
    if not texts:
        raise AGNewsError(f"{path} holds no texts")
    blank = blank_rows(texts)
    if len(blank) == len(texts):
        raise AGNewsError(f"every text in {path} is empty; nothing to predict")
    if blank:
        rank_zero_info(
            f"agnews: warning: {len(blank)} of {len(texts)} texts in {path} are empty (ids {describe_rows(blank)}): not predicted, their output rows have no label"
        )
    rows = [i for i, t in enumerate(texts) if t.strip()]
    tensors = encode(tokenizer, [texts[i] for i in rows], max_length)
    cut = int((tensors["lengths"] >= max_length).sum())
    if cut:
        rank_zero_info(f"agnews: {cut} texts reached max_length={max_length} tokens; longer ones were truncated")
    return texts, rows, tensors
