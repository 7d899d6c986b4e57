import lightning as L
import pytest
import torch

from agnews.data.batching import LengthGroupedBatchSampler, SeededShuffle, SortedBatchSampler, in_original_order
from agnews.data.datamodule import AGNewsDataModule
from agnews.modeling.module import AGNewsClassifier

LENGTHS = torch.randint(3, 120, (1003,), generator=torch.Generator().manual_seed(0))


def epoch_batches(seed: int, epoch: int, batch_size: int = 16, drop_last: bool = False) -> list[list[int]]:
    sampler = SeededShuffle(len(LENGTHS), seed=seed)
    sampler.set_epoch(epoch)
    batches = LengthGroupedBatchSampler(sampler, batch_size, drop_last, lengths=LENGTHS)
    batches.window_batches = 10
    out = list(batches)
    assert len(out) == len(batches)
    return out


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_every_row_exactly_once_per_epoch(epoch):
    batches = epoch_batches(seed=7, epoch=epoch)
    rows = [r for b in batches for r in b]
    assert sorted(rows) == list(range(len(LENGTHS)))
    assert all(1 <= len(b) <= 16 for b in batches)


def test_drop_last_drops_only_short_batches():
    batches = epoch_batches(seed=7, epoch=0, drop_last=True)
    assert all(len(b) == 16 for b in batches)
    assert len(LENGTHS) - 16 * 10 < sum(map(len, batches)) <= len(LENGTHS)


def test_seed_and_epoch_decide_the_order():
    assert epoch_batches(seed=1, epoch=0) == epoch_batches(seed=1, epoch=0)
    assert epoch_batches(seed=1, epoch=0) != epoch_batches(seed=1, epoch=1)
    assert epoch_batches(seed=1, epoch=0) != epoch_batches(seed=2, epoch=0)


def padded_tokens(batches) -> int:
    return sum(len(b) * int(LENGTHS[b].max()) for b in batches)


def test_grouped_batches_pad_far_less_than_random_ones():
    grouped = epoch_batches(seed=3, epoch=0)
    order = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(3)).tolist()
    random = [order[i : i + 16] for i in range(0, len(order), 16)]
    real = int(LENGTHS.sum())
    assert padded_tokens(grouped) - real < 0.25 * (padded_tokens(random) - real)


def test_sorted_eval_batches_cover_all_rows_longest_first():
    batches = list(SortedBatchSampler(range(len(LENGTHS)), 64, lengths=LENGTHS))
    rows = [r for b in batches for r in b]
    assert sorted(rows) == list(range(len(LENGTHS)))
    assert LENGTHS[rows].tolist() == sorted(LENGTHS.tolist(), reverse=True)


def test_in_original_order():
    batches = [
        {"index": torch.tensor([2, 0]), "x": torch.tensor([20, 0])},
        {"index": torch.tensor([1]), "x": torch.tensor([10])},
    ]
    assert in_original_order(batches)["x"].tolist() == [0, 10, 20]


def predict(
    tiny_bert, data_dir, tmp_path, group_by_length: bool, precision: str = "32-true", pad_to: int | None = None
):
    L.seed_everything(0)
    model = AGNewsClassifier(backbone=str(tiny_bert))
    dm = AGNewsDataModule(
        dataset=str(data_dir),
        tokenizer=str(tiny_bert),
        max_length=32,
        eval_batch_size=7,
        cache_dir=str(tmp_path / "cache"),
        group_by_length=group_by_length,
        pad_to_multiple_of=pad_to,
    )
    trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
    return in_original_order(trainer.predict(model, datamodule=dm))


def test_fast_path_predicts_like_the_plain_path_in_input_order(tiny_bert, data_dir, tmp_path):
    plain = predict(tiny_bert, data_dir, tmp_path, group_by_length=False)
    fast = predict(tiny_bert, data_dir, tmp_path, group_by_length=True)
    assert fast["index"].tolist() == list(range(80))
    torch.testing.assert_close(fast["probs"], plain["probs"], atol=1e-5, rtol=1e-4)
    assert torch.equal(fast["preds"], plain["preds"])


def test_padding_to_a_multiple_predicts_the_same(tiny_bert, data_dir, tmp_path):
    plain = predict(tiny_bert, data_dir, tmp_path, group_by_length=True, pad_to=1)
    padded = predict(tiny_bert, data_dir, tmp_path, group_by_length=True, pad_to=16)
    torch.testing.assert_close(padded["probs"], plain["probs"], atol=1e-5, rtol=1e-4)
    assert torch.equal(padded["preds"], plain["preds"])


def test_bf16_path_predicts_like_fp32(tiny_bert, data_dir, tmp_path):
    plain = predict(tiny_bert, data_dir, tmp_path, group_by_length=False)
    fast = predict(tiny_bert, data_dir, tmp_path, group_by_length=True, precision="bf16-mixed")
    torch.testing.assert_close(fast["probs"], plain["probs"], atol=2e-2, rtol=0)
    assert (fast["preds"] == plain["preds"]).float().mean() >= 0.95
