"""AG News as a LightningDataModule: load (hub or local), tokenize once in bulk, cache tensors, split, pad per batch."""

import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from agnews.data.batching import (
    LengthGroupedBatchSampler,
    PadCollator,
    ResumableDataLoader,
    SeededShuffle,
    SortedBatchSampler,
    TokenizedDataset,
)
from agnews.data.loading import folder_fingerprint, load_raw, tokenize_split
from agnews.data.splits import stratified_split
from agnews.data.teacher import teacher_for_rows
from agnews.data.texts import encode_file
from agnews.data.token_cache import TokenCache
from agnews.errors import AGNewsError
from agnews.internals import batches_done_this_epoch, dataset_fingerprint
from agnews.modeling import backbone
from agnews.precision import DEFAULT_TRAIN_BATCH, eval_batch_size, pad_multiple


class AGNewsDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: str = "fancyzhx/ag_news",
        tokenizer: str = "distilbert-base-uncased",
        max_length: int = 128,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        val_size: int | float = 0.1,
        train_size: int | float | None = None,
        test_size: int | float | None = None,
        seed: int = 42,
        cache_dir: str = "~/.cache/agnews",
        num_workers: int = 0,
        group_by_length: bool = True,
        pad_to_multiple_of: int | None = None,
        predict_file: str | None = None,
        teacher: str | None = None,
        num_classes: int = 4,
    ):
        """
        Args:
            dataset: hub id, or a local folder of parquet/CSV/JSONL files with `text` and `label` columns
                (or the original headerless `class,title,description` CSVs).
            tokenizer: tokenizer name; the CLI links it to `model.backbone`.
            batch_size: training rows per batch; None: 16 here, and the CLI's `fit` chooses it for the machine
                (agnews.precision.train_batch_size: 32 with bf16 and AMX, the learning rate scaled to it).
            eval_batch_size: rows per validation/test/predict batch; None: the fastest measured for the run's
                precision on a CPU (fp32 32, bf16 64; docs/performance.md), 128 on an accelerator.
            val_size: validation rows carved out of train, stratified (a count, or a fraction if < 1).
            train_size: keep only this many training rows (stratified), to fit a CPU budget.
            test_size: evaluate on a stratified subset of the test split (quick checks only).
            cache_dir: where tokenized splits are cached as `.pt` files.
            group_by_length: batch rows of similar length together (training: random buckets; evaluation:
                sorted), so that little padding is computed. Off: plain shuffled / sequential batches.
            pad_to_multiple_of: a batch's length rounded up to a multiple of this many tokens; None: 8 under bf16
                (a CPU's bf16 kernels are built per input shape: fewer shapes, less time and memory), else 1.
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
        self.hparams.batch_size = DEFAULT_TRAIN_BATCH if batch_size is None else batch_size
        if max_length < 2:
            raise AGNewsError(f"max_length={max_length} is too short; use at least 2 (e.g. 128)")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise AGNewsError(f"pad_to_multiple_of={pad_to_multiple_of}: use 1 or more (1: no rounding), or null")
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

    def _locate(self, splits: list[str], in_setup: bool = False):
        """The cache file of each split, the tokenizer, and the raw data where finding the files needed it."""
        hp = self.hparams
        tokenizer = backbone.load_tokenizer(hp.tokenizer)
        local = Path(hp.dataset).expanduser()
        loaded = None
        noted = self.cache.noted_fingerprints(hp.dataset) if in_setup and not local.is_dir() else {}
        if local.is_dir():  # hashing the files is much faster than loading them: a warm cache stays near-instant
            fingerprints = dict.fromkeys(splits, folder_fingerprint(local))
        elif all(split in noted for split in splits):  # setup after this run's prepare_data: no second load
            fingerprints = {split: noted[split] for split in splits}
        else:
            loaded = self._load_raw(splits)
            fingerprints = {split: dataset_fingerprint(loaded[0][split]) for split in splits}
            if not in_setup:
                self.cache.note_fingerprints(hp.dataset, fingerprints)
        tok_fp = backbone.tokenizer_fingerprint(tokenizer)
        paths = {split: self.cache.path(split, fingerprints[split], tok_fp) for split in splits}
        return paths, tokenizer, loaded

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

    def prepare_data(self) -> None:
        hp = self.hparams
        stage = self._stage()
        if hp.predict_file is not None and stage == "predict":  # nothing to cache: setup reads and tokenizes it
            return
        splits = {"fit": ["train"], "validate": ["train"], "test": ["test"], "predict": ["test"]}.get(
            stage, ["train", "test"]
        )
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
        start = time.perf_counter()
        tensors = tokenize_split(ds, split, hp.dataset, class_names, tokenizer, hp.max_length)
        seconds = time.perf_counter() - start
        self.cache.write(path, tensors)
        rank_zero_info(
            f"agnews: cache miss for {split}: tokenized {len(tensors['labels']):,} rows in {seconds:.2f} s -> {path}"
        )

    # ---- setup: runs in every process, assigns state ----

    def _load_split(self, split: str) -> dict:
        tensors = self.cache.load(self._locate([split], in_setup=True)[0][split], split)
        self.class_names = tensors["class_names"]
        self.pad_token_id = tensors["pad_token_id"]
        return tensors

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in ("fit", "validate", None) and self.train_set is None:
            train = self._load_split("train")
            labels = train["labels"].numpy()
            val_rows, train_rows = stratified_split(labels, hp.val_size, hp.seed, "val_size")
            if isinstance(hp.train_size, int) and hp.train_size >= len(train_rows):
                # a budget larger than the data (the hub default's 6,000 of a smaller copy): all rows, said once
                rank_zero_info(
                    f"agnews: train_size={hp.train_size:,} is more than the {len(train_rows):,} rows left: all taken"
                )
            elif hp.train_size is not None:
                train_rows = train_rows[stratified_split(labels[train_rows], hp.train_size, hp.seed, "train_size")[0]]
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
                rows = stratified_split(test["labels"].numpy(), hp.test_size, hp.seed, "test_size")[0]
            self.test_set = TokenizedDataset(test, rows)

    def _teacher_logits(self, train: dict):
        if self.hparams.teacher is None:
            return None
        teacher = teacher_for_rows(self.hparams.teacher, train)
        self.teacher_info = teacher.identity
        return teacher.logits

    def _setup_predict_file(self) -> None:
        hp = self.hparams
        tokenizer = backbone.load_tokenizer(hp.tokenizer)
        self.predict_texts, self.predict_rows, tensors = encode_file(hp.predict_file, tokenizer, hp.max_length)
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
        multiple = hp.pad_to_multiple_of or pad_multiple(self._precision()[0])
        kwargs = dict(
            collate_fn=PadCollator(self.pad_token_id, multiple),
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

    def _precision(self) -> tuple[str, bool]:
        """(the run's precision, whether it runs on a CPU); fp32 on a CPU outside a Trainer."""
        trainer = self.trainer
        return ("32", True) if trainer is None else (trainer.precision, isinstance(trainer.accelerator, CPUAccelerator))

    def eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or eval_batch_size(*self._precision())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size(), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size(), train=False)

    def predict_dataloader(self) -> DataLoader:
        dataset = self.test_set if self.hparams.predict_file is None else self.predict_set
        return self._loader(dataset, self.eval_batch_size(), train=False)
