"""Length-aware batching: rows of similar length share a batch, so dynamic padding pads little."""

import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler


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


class LengthGroupedBatchSampler(BatchSampler):
    """Training batches from buckets of similar length, still random and every row once per epoch.

    The inner sampler's order is cut into windows of `batch_size * window_batches` rows; each window is
    sorted by length and cut into batches; then the order of all batches is shuffled (seeded by the inner
    sampler's seed and epoch). A `DistributedSampler` works as the inner sampler too.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool = False,
        lengths: Sequence[int] | torch.Tensor = (),
        window_batches: int = 50,
    ):
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = torch.as_tensor(lengths)
        self.window_batches = window_batches

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


class SortedBatchSampler(BatchSampler):
    """Evaluation batches of the sampler's rows sorted longest first: least padding, and the memory peak
    comes at once, not late. Each batch carries its row positions, so results can be put back in order."""

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool = False,
        lengths: Sequence[int] | torch.Tensor = (),
    ):
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = torch.as_tensor(lengths)

    def __iter__(self) -> Iterator[list[int]]:
        rows = torch.tensor(list(self.sampler), dtype=torch.long)
        rows = rows[torch.argsort(self.lengths[rows], descending=True, stable=True)]
        batches = [rows[i : i + self.batch_size].tolist() for i in range(0, len(rows), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        yield from batches


class ResumableDataLoader(DataLoader):
    """A DataLoader that starts each pass at the first batch not trained on yet: `batches_done(len(self))`,
    asked at the pass's first batch (Lightning restores a run's progress after creating the iterator). A run
    resumed mid-epoch then continues the interrupted epoch in the same (seeded) order instead of training on
    its first batches again; at an epoch's start it is 0."""

    def __init__(self, *args, batches_done: Callable[[int], int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def __iter__(self):
        iterator = super().__iter__()

        def remaining():  # a generator: nothing is drawn or skipped before the first batch is asked for
            skip = self.batches_done(len(self)) if self.batches_done is not None else 0
            yield from itertools.islice(iterator, skip, None)

        return remaining()
