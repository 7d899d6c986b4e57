"""Batching pieces shared by training, evaluation and the `Classifier` API: the tokenized rows, padding per
batch, length-aware samplers (rows of similar length share a batch, so dynamic padding pads little), and
putting results back in input order. No Lightning or datasets here: the inference API imports this alone."""

import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


class SeededShuffle(Sampler[int]):
    """A fresh permutation each epoch, drawn from `seed + epoch`: the same seed gives the same orders."""

    def __init__(self, num_rows: int, seed: int = 0):
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_rows, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_rows


class _ByLength(BatchSampler):
    """A batch sampler that knows each row's length (tokens), to batch similar lengths together."""

    # the arguments spelled out: under DDP Lightning builds the batch sampler again from its __init__'s parameter
    # names, with a DistributedSampler as `sampler`
    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool = False,
        lengths: Sequence[int] | torch.Tensor = (),
    ):
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = torch.as_tensor(lengths)


class LengthGroupedBatchSampler(_ByLength):
    """Training batches from buckets of similar length, still random and every row once per epoch.

    The inner sampler's order is cut into windows of `batch_size * window_batches` rows; each window is
    sorted by length and cut into batches; then the order of all batches is shuffled (seeded by the inner
    sampler's seed and epoch). A `DistributedSampler` works as the inner sampler too.
    """

    window_batches = 50  # batches per sorted window: a setting, not an argument, so the __init__ stays _ByLength's

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the order is drawn at the first batch, after Lightning's set_epoch, even on a resumed run
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        window = self.batch_size * self.window_batches
        batches = []
        for start in range(0, len(order), window):
            rows = order[start : start + window]
            rows = rows[torch.argsort(self.lengths[rows], stable=True)]
            batches.extend(rows[i : i + self.batch_size].tolist() for i in range(0, len(rows), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        seed = getattr(self.sampler, "seed", 0) + getattr(self.sampler, "epoch", 0)
        shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed)).tolist()
        yield from (batches[i] for i in shuffle)

    def __len__(self) -> int:
        # windows are cut from the whole order, so only the last batch of each window can be short
        n = len(self.sampler)
        window = self.batch_size * self.window_batches
        full, rest = divmod(n, window)
        per_window = self.window_batches
        if self.drop_last:
            return full * per_window + rest // self.batch_size
        return full * per_window + -(-rest // self.batch_size)


class SortedBatchSampler(_ByLength):
    """Evaluation batches of the sampler's rows sorted longest first: least padding, and the memory peak
    comes at once, not late. Each batch carries its row positions, so results can be put back in order."""

    def __iter__(self) -> Iterator[list[int]]:
        rows = torch.tensor(list(self.sampler), dtype=torch.long)
        rows = rows[torch.argsort(self.lengths[rows], descending=True, stable=True)]
        batches = [rows[i : i + self.batch_size].tolist() for i in range(0, len(rows), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        yield from batches


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose position Lightning saves into the checkpoint and restores (`state_dict` /
    `load_state_dict`, Lightning's stateful-loader interface): a run resumed mid-epoch continues the interrupted
    epoch in the same seeded order, from the first batch not trained on, instead of starting it again.

    The position lives with its owner (the DataModule), not in the loader, so a loader that Lightning rebuilds
    (with a DistributedSampler under DDP) resumes as exactly as the one it replaced: `position()` is where the
    next batch is ({"epoch", "batches"}), `restore(state)` hands a saved position back to the owner, and
    `start()` tells an iterator starting now which epoch it is and how many of its batches were trained already.
    The epoch is set on the sampler here, before workers draw indices: on a resume Lightning creates the
    iterator before it calls `set_epoch`.

    Not torchdata's `StatefulDataLoader`: Lightning 2.6 drops a loader's saved state when the loader was built
    before the checkpoint was restored, as `estimated_stepping_batches` (the schedule's length) builds it
    (Lightning issue #20550), so it would restart the epoch; the DataModule's state is restored before that."""

    def __init__(
        self,
        *args,
        position: Callable[[], dict],
        restore: Callable[[dict], None],
        start: Callable[[], tuple[int, int]],
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.position, self.restore, self.start = position, restore, start

    def state_dict(self) -> dict:
        return self.position()

    def load_state_dict(self, state: dict) -> None:
        self.restore(dict(state))

    def __iter__(self):
        epoch, skip = self.start()
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        return itertools.islice(super().__iter__(), skip, None)


class TokenizedDataset(Dataset):
    """Rows of a cached split: token ids stored flat, sliced per row (no padding stored); with `teacher`, each
    row also carries the teacher's logits for it (indexed like the split's rows)."""

    def __init__(self, split: dict, rows: np.ndarray | None = None, teacher: torch.Tensor | None = None):
        self.input_ids = split["input_ids"]
        self.teacher = teacher
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), split["lengths"].long().cumsum(0)])
        self.labels = split["labels"]
        self.rows = torch.arange(len(self.labels)) if rows is None else torch.as_tensor(rows)
        self.lengths = split["lengths"][self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        ids = self.input_ids[self.offsets[row] : self.offsets[row + 1]]
        if self.teacher is None:
            return ids, self.labels[row], i
        return ids, self.labels[row], i, self.teacher[row]


class PadCollator:
    """Pad each batch to its own longest row, rounded up to a multiple of `multiple` tokens, as
    `DataCollatorWithPadding(pad_to_multiple_of=...)` does, without a Python tokenizer call."""

    def __init__(self, pad_token_id: int, multiple: int = 1):
        self.pad_token_id, self.multiple = pad_token_id, multiple

    def __call__(self, batch):
        ids, labels, index, *teacher = zip(*batch, strict=True)
        input_ids = pad_sequence([x.long() for x in ids], batch_first=True, padding_value=self.pad_token_id)
        if input_ids.shape[1] % self.multiple:
            extra = self.multiple - input_ids.shape[1] % self.multiple
            input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=self.pad_token_id)
        lengths = torch.tensor([len(x) for x in ids])
        attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.stack(labels),
            "index": torch.tensor(index),  # position in the dataset, to undo length sorting
        }
        if teacher:
            out["teacher_logits"] = torch.stack(teacher[0])
        return out


def in_original_order(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join per-batch prediction dicts (each with an `index`) back into the dataset's row order."""
    index = torch.cat([b["index"] for b in batches])
    order = torch.argsort(index)
    return {key: torch.cat([b[key] for b in batches])[order] for key in batches[0]}
