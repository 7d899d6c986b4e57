"""AG News as a LightningDataModule: load (hub or local), tokenize once in bulk, cache tensors, split, pad per batch."""

import csv
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow.compute as pc
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from agnews import backbone
from agnews.atomic import atomic_file
from agnews.batching import (
    LengthGroupedBatchSampler,
    PadCollator,
    ResumableDataLoader,
    SeededShuffle,
    SortedBatchSampler,
    TokenizedDataset,
)
from agnews.errors import AGNewsError
from agnews.internals import batches_done_this_epoch, dataset_fingerprint, datasets_offline
from agnews.precision import eval_batch_size
from agnews.sources import hub_status
from agnews.teacher import check_rows, read_teacher, rows_fingerprint
from agnews.texts import blank_rows, describe_rows, encode, read_texts
from agnews.token_cache import DamagedCache, TokenCache, read_cache

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


def _folder_fingerprint(folder: Path) -> str:
    """Hash of every data file's bytes: any edit, addition or removal changes it."""
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in DATA_SUFFIXES and not any(part.startswith(".") for part in p.parts[-2:]):
            digest.update(str(p.relative_to(folder)).encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def stratified_take(labels: np.ndarray, size: int | float, generator: torch.Generator, what: str):
    """Split row positions into (taken, rest), taking `size` rows (a count, or a fraction if a float < 1)
    with every class in proportion."""
    n = len(labels)
    count = int(round(size * n)) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < count < n:
        raise AGNewsError(
            f"{what}={size!r} must leave rows on both sides of the split of {n} rows (a count 1..{n - 1} or a fraction in (0, 1))"
        )
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * count / n
    quota = np.floor(exact).astype(int)
    # hand the rows lost to rounding to the classes with the largest remainders
    for i in np.argsort(-(exact - quota), kind="stable")[: count - quota.sum()]:
        quota[i] += 1
    taken, rest = [], []
    for cls, q in zip(classes, quota, strict=False):
        rows = np.flatnonzero(labels == cls)
        rows = rows[torch.randperm(len(rows), generator=generator).numpy()]
        taken.append(rows[:q])
        rest.append(rows[q:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


class AGNewsDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str = "fancyzhx/ag_news",
        tokenizer: str = "distilbert-base-uncased",
        max_length: int = 128,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        val_size: int | float = 0.1,
        train_size: int | float | None = None,
        test_size: int | float | None = None,
        seed: int = 42,
        cache_dir: str = "~/.cache/agnews",
        num_workers: int = 0,
        group_by_length: bool = True,
        predict_file: str | None = None,
        teacher: str | None = None,
        num_classes: int = 4,
    ):
        """
        Args:
            dataset: hub id, or a local folder of parquet/CSV/JSONL files with `text` and `label` columns
                (or the original headerless `class,title,description` CSVs).
            tokenizer: tokenizer name; the CLI links it to `model.backbone`.
            eval_batch_size: rows per validation/test/predict batch; None: the fastest measured for the run's
                precision on a CPU (fp32 32, bf16 128; docs/performance.md), 128 on an accelerator.
            val_size: validation rows carved out of train, stratified (a count, or a fraction if < 1).
            train_size: keep only this many training rows (stratified), to fit a CPU budget.
            test_size: evaluate on a stratified subset of the test split (quick checks only).
            cache_dir: where tokenized splits are cached as `.pt` files.
            group_by_length: batch rows of similar length together (training: random buckets; evaluation:
                sorted), so that little padding is computed. Off: plain shuffled / sequential batches.
            predict_file: texts for `predict` (`.txt` one per line, or `.csv`/`.jsonl`/`.parquet` with a `text`
                column); without it `predict` runs on the test split.
            teacher: a teacher file for distillation (`python -m agnews.distill teacher`): its logits for every
                row of this data's train split travel with the training batches; a file made from other rows is
                refused. None: no teacher (the model's distill_weight is then unused).
            num_classes: how many classes integer labels (0..N-1) stand for; the CLI links it to
                `model.num_classes`. Text labels and a `ClassLabel` bring their own.
        """
        super().__init__()
        self.save_hyperparameters()
        if max_length < 2:
            raise AGNewsError(f"max_length={max_length} is too short; use at least 2 (e.g. 128)")
        self.cache = TokenCache(cache_dir, max_length, num_classes)
        self.class_names: list[str] | None = None
        self.pad_token_id: int | None = None
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self.predict_texts: list[str] | None = None  # the predict file's rows, blank ones included
        self.predict_rows: list[int] | None = None  # the rows predicted (not blank)
        self._train_loader: ResumableDataLoader | None = None
        self._loader_state: dict | None = None  # restored from a checkpoint, for the next training loader
        self.teacher_info: dict | None = None  # the teacher file this fit learns from, recorded in its checkpoints

    # ---- preparation: runs once per machine, writes files only ----

    def _stage(self) -> str | None:
        return getattr(self.trainer.state.fn, "value", None) if self.trainer is not None else None

    def _splits_for_stage(self) -> list[str]:
        stage = self._stage()
        return {"fit": ["train"], "validate": ["train"], "test": ["test"], "predict": ["test"]}.get(
            stage, ["train", "test"]
        )

    def _hub_index(self) -> Path:
        """Where prepare_data notes the `datasets` fingerprint of each split of a hub dataset, so that setup finds
        the cache files without loading the dataset (and asking the hub) again."""
        name = hashlib.sha256(self.hparams.dataset.encode()).hexdigest()[:16]
        return self.cache.root / f"hub-{name}.json"

    def _locate(self, splits: list[str], in_setup: bool = False):
        """The cache file of each split, the tokenizer, and the raw data where finding the files needed it."""
        hp = self.hparams
        tokenizer = backbone.load_tokenizer(hp.tokenizer)
        local = Path(hp.dataset).expanduser()
        loaded = None
        noted = {}
        if not local.is_dir() and in_setup and self._hub_index().is_file():
            noted = json.loads(self._hub_index().read_text())
        if local.is_dir():  # hashing the files is much faster than loading them: a warm cache stays near-instant
            fingerprints = dict.fromkeys(splits, _folder_fingerprint(local))
        elif all(split in noted for split in splits):  # setup after this run's prepare_data: no second load
            fingerprints = {split: noted[split] for split in splits}
        else:
            loaded = self._load_raw(splits)
            fingerprints = {split: dataset_fingerprint(loaded[0][split]) for split in splits}
            if not in_setup:
                self._note_fingerprints(fingerprints)
        tok_fp = backbone.tokenizer_fingerprint(tokenizer)
        paths = {split: self.cache.path(split, fingerprints[split], tok_fp) for split in splits}
        return paths, tokenizer, loaded

    def _note_fingerprints(self, fingerprints: dict[str, str]) -> None:
        index = self._hub_index()
        index.parent.mkdir(parents=True, exist_ok=True)
        with self.cache.lock(index):
            noted = json.loads(index.read_text()) if index.is_file() else {}
            with atomic_file(index) as tmp:
                tmp.write_text(json.dumps(noted | fingerprints))

    def _load_raw(self, splits: list[str]):
        raw, class_names = load_raw(self.hparams.dataset, self.hparams.num_classes)
        # fit needs only train, but the run is tested afterwards: a data set without a test split fails now, not then
        for split in [*splits, *(["test"] if "train" in splits and self._stage() == "fit" else [])]:
            if split not in raw:
                raise AGNewsError(
                    f"dataset {self.hparams.dataset!r} has no {split!r} split (found: {', '.join(raw) or 'none'}); "
                    f"name the files {split}.parquet/.csv/.jsonl"
                )
        return raw, class_names

    def _predicts_file(self) -> bool:
        return self.hparams.predict_file is not None and self._stage() == "predict"

    def prepare_data(self) -> None:
        hp = self.hparams
        if self._predicts_file():  # nothing to cache: the texts are read and tokenized in setup
            return
        splits = self._splits_for_stage()
        paths, tokenizer, loaded = self._locate(splits)
        limit = backbone.max_positions(hp.tokenizer, tokenizer)
        if hp.max_length > limit:
            raise AGNewsError(
                f"max_length={hp.max_length} exceeds what {hp.tokenizer!r} accepts ({limit}); set --data.max_length {limit} or less"
            )
        for split, path in paths.items():
            with self.cache.lock(path):  # one process tokenizes, others wait and then find its file
                if self.cache.is_valid(path, split):
                    rank_zero_info(f"agnews: cache hit for {split}: {path}")
                    continue
                raw, class_names = loaded = loaded or self._load_raw(splits)
                self._tokenize_and_save(raw[split], split, class_names, tokenizer, path)

    def _tokenize_and_save(self, ds, split: str, class_names: list[str], tokenizer, path: Path) -> None:
        hp = self.hparams
        missing = {"text", "label"} - set(ds.column_names)
        if missing:
            raise AGNewsError(
                f"the {split} split of {hp.dataset!r} has no {' or '.join(sorted(missing))} column (columns: {', '.join(ds.column_names)}); rename the columns to text and label"
            )
        labels = np.asarray(ds["label"])
        if len(labels) == 0:
            raise AGNewsError(f"the {split} split of {hp.dataset!r} is empty")
        n = len(class_names)
        bad = [v for v in labels.tolist() if type(v) is not int or not 0 <= v < n]  # a list: a bad one may be None
        if bad:
            raise AGNewsError(
                f"the {split} split of {hp.dataset!r} has label {bad[0]!r}; labels must be integers 0..{n - 1} ({', '.join(class_names)})"
            )
        if any(t is None for t in ds["text"]):
            raise AGNewsError(f"the {split} split of {hp.dataset!r} has empty (null) texts; drop or fill those rows")

        start = time.perf_counter()
        tokenized = ds.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=hp.max_length),
            batched=True,
            batch_size=2000,
            remove_columns=ds.column_names,
            keep_in_memory=True,
            desc=f"Tokenizing {split}",
        )
        column = tokenized.data.column("input_ids").combine_chunks()
        tensors = {
            "input_ids": torch.from_numpy(column.flatten().to_numpy().astype(np.int32)),
            "lengths": torch.from_numpy(pc.list_value_length(column).to_numpy().astype(np.int32)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "class_names": list(class_names),
            "pad_token_id": int(tokenizer.pad_token_id or 0),
            # what a teacher file is keyed by: the rows themselves, whatever tokenizer either side uses
            "rows": rows_fingerprint(ds["text"], labels.tolist()),
        }
        seconds = time.perf_counter() - start
        self.cache.write(path, tensors)
        rank_zero_info(f"agnews: cache miss for {split}: tokenized {len(labels):,} rows in {seconds:.2f} s -> {path}")

    # ---- setup: runs in every process, assigns state ----

    def _load_split(self, split: str) -> dict:
        path = self._locate([split], in_setup=True)[0][split]
        if not path.is_file():
            raise AGNewsError(f"no tokenized cache for the {split} split at {path}; call prepare_data() first")
        try:
            tensors = read_cache(path)
        except DamagedCache as err:
            raise AGNewsError(
                f"the cached {split} split {path} {err}; run again and prepare_data() rebuilds it"
            ) from None
        self.class_names = tensors["class_names"]
        self.pad_token_id = tensors["pad_token_id"]
        return tensors

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in ("fit", "validate", None) and self.train_set is None:
            train = self._load_split("train")
            labels = train["labels"].numpy()
            generator = torch.Generator().manual_seed(hp.seed)
            val_rows, train_rows = stratified_take(labels, hp.val_size, generator, "val_size")
            if isinstance(hp.train_size, int) and hp.train_size >= len(train_rows):
                # a budget larger than the data (the hub default's 6,000 of a smaller copy): all rows, said once
                rank_zero_info(
                    f"agnews: train_size={hp.train_size:,} is more than the {len(train_rows):,} rows left: all taken"
                )
            elif hp.train_size is not None:
                train_rows = train_rows[stratified_take(labels[train_rows], hp.train_size, generator, "train_size")[0]]
            # `validate` scores the validation rows only: no teacher file to read
            teacher = self._teacher_logits(train) if stage != "validate" else None
            self.train_set = TokenizedDataset(train, train_rows, teacher=teacher)
            self.val_set = TokenizedDataset(train, val_rows)
            rank_zero_info(f"agnews: {len(self.train_set):,} training rows, {len(self.val_set):,} validation rows")
        if stage == "predict" and hp.predict_file is not None:
            if self.predict_set is None:
                self._setup_predict_file()
            return
        if stage in ("test", "predict", None) and self.test_set is None:
            test = self._load_split("test")
            rows = None
            if hp.test_size is not None:
                generator = torch.Generator().manual_seed(hp.seed)
                rows = stratified_take(test["labels"].numpy(), hp.test_size, generator, "test_size")[0]
            self.test_set = TokenizedDataset(test, rows)

    def _teacher_logits(self, train: dict):
        if self.hparams.teacher is None:
            return None
        teacher = read_teacher(self.hparams.teacher)
        check_rows(teacher, train.get("rows"), train["labels"], train["class_names"])
        self.teacher_info = teacher.identity
        rank_zero_info(
            f"agnews: distilling from teacher file {self.hparams.teacher} ({teacher.meta.get('backbone')}, "
            f"{teacher.accuracy():.2%} on these rows)"
        )
        return teacher.logits

    def _setup_predict_file(self) -> None:
        hp = self.hparams
        texts = read_texts(hp.predict_file)
        if not texts:
            raise AGNewsError(f"{hp.predict_file} holds no texts")
        blank = blank_rows(texts)
        if blank:
            rank_zero_info(
                f"agnews: warning: {len(blank)} of {len(texts)} texts in {hp.predict_file} are empty (ids {describe_rows(blank)}): not predicted, their output rows have no label"
            )
        if len(blank) == len(texts):
            raise AGNewsError(f"every text in {hp.predict_file} is empty; nothing to predict")
        tokenizer = backbone.load_tokenizer(hp.tokenizer)
        self.predict_rows = [i for i, t in enumerate(texts) if t.strip()]
        tensors = encode(tokenizer, [texts[i] for i in self.predict_rows], hp.max_length)
        cut = int((tensors["lengths"] >= hp.max_length).sum())
        if cut:
            rank_zero_info(f"agnews: {cut} texts reached max_length={hp.max_length} tokens; longer ones were truncated")
        self.predict_texts = texts
        self.pad_token_id = int(tokenizer.pad_token_id or 0)
        self.predict_set = TokenizedDataset(tensors)

    def _loader(self, dataset, batch_size: int, train: bool) -> DataLoader:
        hp = self.hparams
        if hp.num_workers > 0:
            # the bulk tokenization above used Rust threads: say so before workers fork, instead of a warning each
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # training order is drawn from seed + epoch, never from the global RNG: a resumed run sees the same batches
        inner = SeededShuffle(len(dataset), seed=hp.seed) if train else SequentialSampler(dataset)
        if not hp.group_by_length:
            batching = {"batch_sampler": BatchSampler(inner, batch_size, drop_last=False)}
        elif train:
            batching = {"batch_sampler": LengthGroupedBatchSampler(inner, batch_size, lengths=dataset.lengths)}
        else:
            batching = {"batch_sampler": SortedBatchSampler(inner, batch_size, lengths=dataset.lengths)}
        kwargs = dict(
            collate_fn=PadCollator(self.pad_token_id),
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            **batching,
        )
        if not train:
            return DataLoader(dataset, **kwargs)
        return ResumableDataLoader(
            dataset, position=self._position, restore=self._restore_position, start=self._start, **kwargs
        )

    def _position(self) -> dict:
        """Where the next training batch is: the epoch and the batches of it already trained (Lightning's own
        count, which `limit_train_batches` and `accumulate_grad_batches` leave right)."""
        trainer = self.trainer
        if trainer is None:
            return {"epoch": 0, "batches": 0}
        epoch, batches = trainer.current_epoch, batches_done_this_epoch(trainer)
        if batches >= trainer.num_training_batches:  # the epoch is over: the next one starts from its beginning
            epoch, batches = epoch + 1, 0
        return {"epoch": epoch, "batches": batches}

    def _restore_position(self, state: dict) -> None:
        self._loader_state = state

    def _start(self) -> tuple[int, int]:
        """(epoch, batches to pass over) for a training iterator starting now: a restored position, once; else
        the trainer's epoch."""
        state, self._loader_state = self._loader_state, None
        if state is not None:
            return state["epoch"], state["batches"]
        return (self.trainer.current_epoch if self.trainer is not None else 0), 0

    def train_dataloader(self) -> DataLoader:
        self._train_loader = self._loader(self.train_set, self.hparams.batch_size, train=True)
        return self._train_loader

    # The training loader's position travels in the checkpoint through these DataModule hooks, which Lightning
    # restores before anything asks for the loader (`estimated_stepping_batches` builds it before the loops'
    # own loader state would be restored). The loader implements the same interface for Lightning itself.
    def state_dict(self) -> dict:
        state = {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}
        if self.teacher_info is not None:
            state["teacher"] = dict(self.teacher_info)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("teacher")
        if self._stage() == "fit" and (saved or {}).get("teacher") != (self.teacher_info or {}).get("teacher"):
            had = f"teacher file {saved['file']}" if saved else "no teacher"
            now = f"teacher file {self.hparams.teacher}" if self.teacher_info else "none"
            raise AGNewsError(
                f"the checkpoint's run learned from {had}, this resume from {now}; resume with the same --data.teacher"
            )
        if state_dict.get("train_loader") is not None:
            self._restore_position(state_dict["train_loader"])

    def eval_batch_size(self) -> int:
        if self.hparams.eval_batch_size is not None:
            return self.hparams.eval_batch_size
        trainer = self.trainer
        if trainer is None:
            return eval_batch_size("32")
        return eval_batch_size(trainer.precision, cpu=isinstance(trainer.accelerator, CPUAccelerator))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size(), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size(), train=False)

    def predict_dataloader(self) -> DataLoader:
        dataset = self.test_set if self.hparams.predict_file is None else self.predict_set
        return self._loader(dataset, self.eval_batch_size(), train=False)
