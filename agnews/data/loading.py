"""Reading a data set (a hub id, a folder of parquet/CSV/JSONL files, or the original AG News CSVs) into text and
integer labels with their class names, checking its splits, and tokenizing one split in bulk."""

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch

from agnews.data.teacher import rows_fingerprint
from agnews.errors import AGNewsError
from agnews.hashing import sha256
from agnews.internals import datasets_offline
from agnews.sources import hub_status

AG_NEWS_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
DATA_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json", ".arrow")


def _is_classic_csv(folder: Path) -> bool:
    """The original AG News release: headerless `class,title,description` rows with classes 1-4."""
    files = sorted(folder.glob("*.csv"))
    if not files or any(folder.glob("*.parquet")) or any(folder.glob("*.jsonl")):
        return False
    with open(files[0], newline="", encoding="utf-8", errors="replace") as f:
        first = next(csv.reader(f), [])
    return len(first) == 3 and first[0].strip().isdigit()


def load_raw(dataset: str, num_classes: int = 4):
    """Return a `datasets.DatasetDict` with `text` and `label` columns, and the class names."""
    import datasets

    path = Path(dataset).expanduser()
    try:
        if path.is_dir():
            if not any(p.suffix in DATA_SUFFIXES for p in path.rglob("*")):
                raise AGNewsError(
                    f"dataset folder {dataset!r} holds no parquet/CSV/JSONL files; "
                    f"point --data.dataset at a folder with train/test files"
                )
            if _is_classic_csv(path):
                files = {p.stem: str(p) for p in sorted(path.glob("*.csv"))}
                raw = datasets.load_dataset(
                    "csv", data_files=files, column_names=["class", "title", "description"], keep_in_memory=True
                )
                raw = raw.map(
                    lambda b: {
                        "text": [f"{t} {d}" for t, d in zip(b["title"], b["description"], strict=False)],
                        "label": [int(c) - 1 for c in b["class"]],
                    },
                    batched=True,
                    remove_columns=["class", "title", "description"],
                )
                return raw, list(AG_NEWS_CLASSES)
            raw = datasets.load_dataset(str(path))
        elif path.exists() or dataset.startswith((".", "/", "~")):
            raise AGNewsError(f"dataset folder {dataset!r} does not exist; check --data.dataset")
        else:
            raw = _load_from_hub(dataset)
    except AGNewsError:
        raise
    except ConnectionError:
        raise _unreachable(dataset, "the Hugging Face hub is unreachable") from None
    except (FileNotFoundError, ValueError) as err:
        raise AGNewsError(f"cannot load dataset {dataset!r}: {str(err).splitlines()[0]}") from None
    except Exception as err:
        if type(err).__name__ == "DatasetNotFoundError":
            raise AGNewsError(
                f"dataset {dataset!r} not found on the Hugging Face hub; check the id or pass a local folder"
            ) from None
        raise
    return _class_names(raw, num_classes)


def _unreachable(dataset: str, why: str) -> AGNewsError:
    return AGNewsError(
        f"cannot download dataset {dataset!r}: {why} and no copy is cached; pass a local folder "
        f"(--data.dataset FOLDER), or leave --data.dataset unset for the AG News rows bundled in data/ag_news"
    )


def _load_from_hub(dataset: str):
    import datasets

    online, why = hub_status()
    if online:
        return datasets.load_dataset(dataset)
    # the probe said no: read the local cache only, instead of retrying the network for half a minute
    with datasets_offline():
        try:
            return datasets.load_dataset(dataset)
        except Exception:
            raise _unreachable(dataset, why) from None


def _class_names(raw, num_classes: int) -> tuple[Any, list[str]]:
    """The data with integer labels, and their names: a `ClassLabel`'s; text labels' in sorted order (encoded
    with one mapping for every split); for integers 0..N-1 (N: `num_classes`) the AG News names when N is 4,
    else "0".."N-1"."""
    import datasets

    features = [split.features.get("label") for split in raw.values()]
    for feature in features:
        if getattr(feature, "names", None):
            return raw, list(feature.names)
    if any(getattr(f, "dtype", None) in ("string", "large_string") for f in features):
        names = sorted({v for split in raw.values() for v in split["label"] if v is not None})
        return raw.cast_column("label", datasets.ClassLabel(names=names)), names
    if num_classes == len(AG_NEWS_CLASSES):
        return raw, list(AG_NEWS_CLASSES)
    return raw, [str(i) for i in range(num_classes)]


def folder_fingerprint(folder: Path) -> str:
    """Hash of every data file's bytes: any edit, addition or removal changes it."""
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in DATA_SUFFIXES and not any(part.startswith(".") for part in p.parts[-2:])
    ]
    return sha256(*(part for p in files for part in (f"{p.relative_to(folder)}\0", p)))[:16]


def check_split(ds, split: str, dataset: str, class_names: list[str]) -> np.ndarray:
    """The split's labels, after refusing what would train wrongly: missing columns, no rows, labels outside
    0..N-1, null texts."""
    missing = {"text", "label"} - set(ds.column_names)
    if missing:
        raise AGNewsError(
            f"the {split} split of {dataset!r} has no {' or '.join(sorted(missing))} column (columns: {', '.join(ds.column_names)}); rename the columns to text and label"
        )
    labels = np.asarray(ds["label"])
    if len(labels) == 0:
        raise AGNewsError(f"the {split} split of {dataset!r} is empty")
    n = len(class_names)
    bad = [v for v in labels.tolist() if type(v) is not int or not 0 <= v < n]  # a list: a bad one may be None
    if bad:
        raise AGNewsError(
            f"the {split} split of {dataset!r} has label {bad[0]!r}; labels must be integers 0..{n - 1} ({', '.join(class_names)})"
        )
    if any(t is None for t in ds["text"]):
        raise AGNewsError(f"the {split} split of {dataset!r} has empty (null) texts; drop or fill those rows")
    return labels


def tokenize_split(ds, split: str, dataset: str, class_names: list[str], tokenizer, max_length: int) -> dict:
    """A checked split tokenized in bulk (`datasets.map(batched=True)`, the fast tokenizer's threads) into the
    token cache's flat tensors: every row's ids end to end, their lengths, the labels."""
    labels = check_split(ds, split, dataset, class_names)
    tokenized = ds.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        batch_size=2000,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        desc=f"Tokenizing {split}",
    )
    column = tokenized.data.column("input_ids").combine_chunks()
    return {
        "input_ids": torch.from_numpy(column.flatten().to_numpy().astype(np.int32)),
        "lengths": torch.from_numpy(pc.list_value_length(column).to_numpy().astype(np.int32)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "class_names": list(class_names),
        "pad_token_id": int(tokenizer.pad_token_id or 0),
        # what a teacher file is keyed by: the rows themselves, whatever tokenizer either side uses
        "rows": rows_fingerprint(ds["text"], labels.tolist()),
    }
