import lightning as L
import pytest
import torch

from agnews.errors import AGNewsError
from agnews.modeling.frozen_outputs import FrozenOutputs
from agnews.modeling.module import AGNewsClassifier
from tests.test_model import StepLosses, fit_tiny, tiny_datamodule


def padded_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (3, 9), generator=generator)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("encoder", ["tiny_distilbert", "tiny_bert", "tiny_mpnet"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_kept_outputs_give_the_full_forward_pass(encoder, pooling, request):
    model = AGNewsClassifier(backbone=str(request.getfixturevalue(encoder)), pooling=pooling)
    assert FrozenOutputs.applies(model.model, 2) is None  # the defaults: two frozen layers, dropout 0
    kept = FrozenOutputs(model.model, 2, 2**30)
    ids, mask = padded_batch(model.model.config.vocab_size)
    full = model(ids, mask)
    with kept.around("train", ids, mask):
        first = model(ids, mask)
    with kept.around("train", ids, mask):
        reused = model(ids, mask)
    assert kept.reused == 1 and len(kept.rows["train"]) == 3
    assert torch.equal(first, full) and torch.allclose(reused, full, atol=1e-6)
    reused.sum().backward()  # the trained layers still get their gradients
    assert all(p.grad is not None for p in model.model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in kept.frozen)

    with torch.no_grad():  # a frozen weight changed in place (a loaded checkpoint, a user's callback)
        model.model.base_model.embeddings.word_embeddings.weight.mul_(2.0)
    changed = model(ids, mask)
    with kept.around("train", ids, mask):
        again = model(ids, mask)
    assert kept.reused == 1 and torch.allclose(again, changed, atol=1e-6)
    assert not torch.allclose(changed, full, atol=1e-3)


def test_not_used_where_the_frozen_outputs_change(tiny_distilbert):
    model = AGNewsClassifier(backbone=str(tiny_distilbert), dropout=None)  # the encoder's own dropout, 0.1
    assert "dropout" in FrozenOutputs.applies(model.model, 2)
    model = AGNewsClassifier(backbone=str(tiny_distilbert), freeze_layers=0)
    assert FrozenOutputs.applies(model.model, 0) == "no frozen layers"
    model = AGNewsClassifier(backbone=str(tiny_distilbert))
    kept = FrozenOutputs(model.model, 2, 2**30)
    ids, mask = padded_batch(model.model.config.vocab_size)
    with kept.around("train", ids, mask):
        model(ids, mask)
    kept.frozen[0].requires_grad_(True)  # a lower layer trained from now on: its outputs change every step
    with kept.around("train", ids, mask):
        model(ids, mask)
    assert not kept.enabled and kept.reused == 0 and not kept.rows


def fit_losses(backbone, data_dir, root, **model_kwargs):
    L.seed_everything(0)
    losses = StepLosses()
    trainer, model, _ = fit_tiny(
        backbone,
        data_dir,
        root,
        learning_rate=1e-2,
        model_kwargs=model_kwargs,
        max_epochs=3,
        callbacks=[losses],
        logger=False,
        enable_checkpointing=False,
    )
    return losses.losses, float(trainer.callback_metrics["val_loss"]), model


def test_fit_reuses_the_first_epochs_outputs_with_the_same_results(tiny_distilbert, data_dir, tmp_path):
    """The default model (DistilBERT) with the default settings: epochs 2 and 3 start every training and
    validation batch from epoch 1's kept outputs, and train step for step as computing them again does."""
    reused, reused_val, model = fit_losses(tiny_distilbert, data_dir, tmp_path / "reused")
    # 128 training rows in 8 batches, 32 validation rows in 1 batch (the sanity check fills it first)
    assert model.fast.frozen_outputs.reused == 2 * 8 + 3 and not model.fast.frozen_outputs.rows  # emptied when fit ends
    L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        model, datamodule=tiny_datamodule(tiny_distilbert, data_dir, tmp_path / "again")
    )
    assert model.fast.frozen_outputs is None  # fitted again for one epoch: nothing kept from the fit before
    computed, computed_val, model = fit_losses(tiny_distilbert, data_dir, tmp_path / "computed", frozen_outputs_gb=0)
    assert model.fast.frozen_outputs is None
    assert len(reused) == len(computed) == 24
    assert reused == pytest.approx(computed, abs=1e-5) and reused_val == pytest.approx(computed_val, abs=1e-5)


def test_over_the_budget_it_computes_again_and_says_so(tiny_distilbert, data_dir, tmp_path, capsys):
    # sized before the fit starts, from the rows' token counts: 160 rows x ~10 tokens x 32 floats
    losses, _, model = fit_losses(tiny_distilbert, data_dir, tmp_path, frozen_outputs_gb=1e-5)
    assert model.fast.frozen_outputs is None and len(losses) == 24
    err = capsys.readouterr().err
    assert "more than --model.frozen_outputs_gb 1e-05: they are computed again every epoch" in err
    # and, where no size was known beforehand, once the kept outputs outgrow it
    model = AGNewsClassifier(backbone=str(tiny_distilbert))
    kept = FrozenOutputs(model.model, 2, budget_bytes=1000)
    ids, mask = padded_batch(model.model.config.vocab_size)
    with kept.around("train", ids, mask):
        model(ids, mask)
    assert not kept.enabled and not kept.rows and kept.size == 0
    assert "outgrow --model.frozen_outputs_gb" in capsys.readouterr().err


def test_negative_budget_is_refused(tiny_distilbert):
    with pytest.raises(AGNewsError, match="frozen_outputs_gb=-1"):
        AGNewsClassifier(backbone=str(tiny_distilbert), frozen_outputs_gb=-1)


def test_only_the_first_process_says_so(tiny_distilbert, capsys, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    model = AGNewsClassifier(backbone=str(tiny_distilbert))
    ids, mask = padded_batch(model.model.config.vocab_size)
    for rank, says in ((1, False), (0, True)):
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        kept = FrozenOutputs(model.model, 2, budget_bytes=1000)
        with kept.around("train", ids, mask):
            model(ids, mask)
        assert not kept.enabled
        assert ("outgrow --model.frozen_outputs_gb" in capsys.readouterr().err) == says


def test_kept_rows_hold_only_their_own_memory_when_a_batch_repeats_some(tiny_distilbert):
    model = AGNewsClassifier(backbone=str(tiny_distilbert))
    ids, mask = padded_batch(model.model.config.vocab_size)
    kept = FrozenOutputs(model.model, 2, budget_bytes=2**30)
    with kept.around("train", ids[:2], mask[:2]):
        model(ids[:2], mask[:2])
    with kept.around("train", ids, mask):  # the first two rows again, kept already
        model(ids, mask)
    rows = kept.rows["train"]
    assert len(rows) == len(ids)
    stored = {row.untyped_storage().data_ptr(): row.untyped_storage().nbytes() for row in rows.values()}
    assert sum(stored.values()) == kept.size
