"""The one place where agnews uses private names of its libraries, for what they offer no public way to do.

Checked against lightning 2.6.6, transformers 5.25, datasets 5.2 and torch 2.13 (pyproject pins lightning to 2.6.x);
tests/test_internals.py fails if any of these names changes, so an upgrade shows here first.
"""

import logging
from contextlib import contextmanager
from unittest import mock

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI


def attention_of(model) -> str | None:
    """The attention kernel a Hugging Face model runs now (transformers keeps it in a private config field)."""
    return getattr(model.config, "_attn_implementation", None)


def can_switch_attention(model) -> bool:
    """False for encoders written before transformers' attention interface (MPNet): they keep their one
    attention, and `set_attn_implementation` would only warn. transformers decides by reading the source of the
    model's module; for agnews' mean-pooled subclasses (agnews.modeling.pooling) the stock class's module is the one to read."""
    stock = next((c for c in type(model).__mro__ if c.__module__.startswith("transformers.models.")), type(model))
    return bool(stock._can_set_attn_implementation())


def version_of(tensor) -> int:
    """A tensor's version counter, which every in-place change moves (autograd's own check that a saved tensor
    was not modified); torch has no public accessor. agnews.modeling.frozen_outputs watches the frozen weights with it,
    agnews.training.bf16_weights the bf16 weights (an edit made outside the optimizer goes into the fp32 master)."""
    return tensor._version


def set_training_length(trainer, max_steps: int, val_every_batches: int) -> None:
    """Change a running fit's length and validation cadence (agnews.training.budget). `Trainer(max_steps=...,
    val_check_interval=...)` fix both before the fit starts; these are the loop's own fields they set (lightning
    2.6: `fit_loop.epoch_loop.max_steps`, `trainer.val_check_batch`, `check_val_every_n_epoch`), read every batch."""
    trainer.fit_loop.epoch_loop.max_steps = max_steps
    trainer.check_val_every_n_epoch = None
    trainer.val_check_batch = val_every_batches


def batches_done_this_epoch(trainer) -> int:
    """Training batches of the current epoch already run: Lightning's own count (the one its checkpoints save),
    which `limit_train_batches` and `accumulate_grad_batches` leave right; the Trainer has no public accessor."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


@contextmanager
def no_lightning_tips():
    """Lightning 2.6 advertises its cloud logger ("💡 Tip: ... litlogger") at every Trainer start, through its
    rank-zero logger, with no setting to turn it off; this drops those lines alone, for one command."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")

    def not_a_tip(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")

    log.addFilter(not_a_tip)
    try:
        yield
    finally:
        log.removeFilter(not_a_tip)


@contextmanager
def datasets_offline():
    """`datasets` reading its local cache only: `load_dataset` has no argument for it, and the `HF_HUB_OFFLINE`
    environment variable is read once at import; its module-level copy is what `load_dataset` checks."""
    import datasets

    with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True):
        yield


def dataset_fingerprint(dataset) -> str:
    """`datasets`' content fingerprint of a split (what its own cache keys on); no public accessor."""
    return dataset._fingerprint


def stratified_indices(labels, n_train: int, n_test: int, seed: int):
    """(train, test) row positions, exactly as `Dataset.train_test_split(test_size=n_test, stratify_by_column=...,
    seed=seed)` draws them. That method reads the label column with `np.asarray(dataset[column])`, which in datasets
    5.2 walks a lazy Column row by row (6 s per split of 120,000 rows, more than the split); its index generator, a
    module-level function of `datasets.utils.stratify` (undocumented), takes the labels as one array."""
    import numpy as np
    from datasets.utils.stratify import stratified_shuffle_split_generate_indices

    return next(stratified_shuffle_split_generate_indices(labels, n_train, n_test, rng=np.random.default_rng(seed)))


class CheckpointHooks(ModelCheckpoint):
    """ModelCheckpoint's private steps under public names, for agnews.training.checkpointing.SafeCheckpoint: Lightning
    2.6 has no public way to write `last.ckpt` outside its top-k bookkeeping, nor to catch a failed write."""

    def write(self, trainer, filepath: str) -> None:
        """Write a checkpoint file the way ModelCheckpoint does (temporary file, then rename)."""
        self._save_checkpoint(trainer, filepath)

    def refresh_last(self, trainer) -> None:
        """Write `last.ckpt` now, as `save_last` promises for every epoch."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def saves_on_train_epoch_end(self, trainer) -> bool:
        return self._should_save_on_train_epoch_end(trainer)

    def on_write_error(self, filepath: str, error: OSError) -> None:
        raise error

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as err:
            self.on_write_error(filepath, err)


class CLIHooks(LightningCLI):
    """LightningCLI with a hook after a subcommand failed, for agnews.train: a callback's `on_exception` runs
    before Lightning closes the logger, whose writer then puts a deleted run folder back. And without Lightning's
    step that writes a checkpoint's hyperparameters over the parsed config (`--ckpt_path`): a typed `--model.x`
    lost to them; agnews.train makes them defaults instead, which typed flags and `--config` files override."""

    def _parse_ckpt_path(self) -> None:
        pass

    def on_run_failed(self, subcommand: str, error: BaseException) -> None:
        """Called with the exception that stopped `subcommand`, which is then raised again."""

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            self.on_run_failed(subcommand, err)
            raise
