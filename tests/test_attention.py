"""SDPA with padded keys (agnews.modeling.attention): the same attention as SDPA, chosen only where it pays."""

import pytest
import torch
import torch.nn.functional as F

from agnews import precision
from agnews.internals import attention_of
from agnews.modeling.attention import PADDED_SDPA, evaluation_attention, padded_keys, sdpa_padded_keys
from agnews.modeling.module import AGNewsClassifier
from agnews.train import cli_main
from tests.conftest import fit_args
from tests.test_precision import AMX_FLAGS, SKYLAKE_FLAGS, ZEN3_FLAGS, ZEN4_FLAGS


def qkv(length: int, dtype=torch.bfloat16, queries: int | None = None):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 8, generator=generator).to(dtype) for _ in range(3))
    return q[:, :, :queries] if queries else q, k, v


@pytest.mark.parametrize(
    "length, dtype, queries, pad",
    [
        (53, torch.bfloat16, None, 11),  # 5 keys past 48: padded to 64
        (20, torch.bfloat16, None, 12),
        (12, torch.bfloat16, None, 4),
        (50, torch.bfloat16, None, 0),  # 2 past 48: the mask would cost more than the tail
        (48, torch.bfloat16, None, 0),
        (53, torch.float32, None, 0),  # fp32 is not helped
        (53, torch.bfloat16, 1, 0),  # one query (the first-token layer): slower padded
    ],
)
def test_keys_are_padded_only_where_it_pays(length, dtype, queries, pad):
    assert padded_keys(*qkv(length, dtype, queries)[:2]) == pad


@pytest.mark.parametrize("mask", [None, "bool", "additive"])
def test_padded_keys_give_sdpas_attention(mask):
    q, k, v = qkv(53)
    real = torch.ones(2, 1, 1, 53, dtype=torch.bool)
    real[1, ..., 40:] = False  # the second row has 13 padding tokens
    masks = {None: None, "bool": real, "additive": torch.zeros(real.shape).masked_fill(~real, -1e9).to(q.dtype)}
    module = torch.nn.Module()
    out, _ = sdpa_padded_keys(module, q, k, v, masks[mask], is_causal=False)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[mask]).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)  # bf16: a different blocking rounds differently


@pytest.mark.parametrize(
    "flags, chosen",
    [(AMX_FLAGS, PADDED_SDPA), (ZEN4_FLAGS, "sdpa"), (SKYLAKE_FLAGS, "sdpa"), (ZEN3_FLAGS, "sdpa"), (None, "sdpa")],
)
def test_evaluation_attention_each_cpu_resolves_to(flags, chosen, monkeypatch):
    monkeypatch.setattr(
        precision, "cpu", lambda: precision.CPU("Test CPU", frozenset(flags.split()) if flags else None)
    )
    assert evaluation_attention() == chosen
    assert evaluation_attention(padded=False) == "sdpa"


def amx(monkeypatch):
    monkeypatch.setattr(precision, "cpu", lambda: precision.CPU("Test CPU", frozenset(AMX_FLAGS.split())))


def test_the_default_model_evaluates_with_padded_keys_to_the_same_logits(tiny_distilbert, monkeypatch):
    amx(monkeypatch)
    model = AGNewsClassifier(backbone=str(tiny_distilbert)).eval().to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.model.config.vocab_size, (4, 21), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    logits = {}
    with torch.inference_mode():
        for kernel in ("sdpa", PADDED_SDPA):
            model.fast.use_attention(kernel)
            assert attention_of(model.model) == kernel
            for rows in (slice(None), slice(0, 2)):  # with padding in the batch, and without (no mask)
                logits[kernel, rows.stop] = model(ids[rows], mask[rows], "test").float()
    for rows in (None, 2):
        torch.testing.assert_close(logits[PADDED_SDPA, rows], logits["sdpa", rows], atol=3e-2, rtol=3e-2)


def test_padded_attention_is_a_switch_a_typed_flag_sets_for_test(tiny_bert, data_dir, tmp_path, monkeypatch):
    amx(monkeypatch)
    cli = cli_main(["fit", *fit_args(tiny_bert, data_dir, tmp_path, "--trainer.max_epochs", "1")])
    assert cli.model.fast.evaluation_attention == PADDED_SDPA
    checkpoint = cli.trainer.checkpoint_callback.best_model_path
    # typed flags win over the checkpoint's own settings (Lightning alone would put the checkpoint's over them)
    test = ["test", "--ckpt_path", checkpoint, "--trainer.default_root_dir", str(tmp_path)]
    off = cli_main([*test, "--model.padded_attention", "false", "--trainer.enable_progress_bar", "false"])
    assert off.model.hparams.padded_attention is False and off.model.fast.evaluation_attention == "sdpa"
    assert attention_of(off.model.model) == "sdpa"
    on = cli_main([*test, "--trainer.enable_progress_bar", "false"])
    assert on.model.hparams.padded_attention is True and attention_of(on.model.model) == PADDED_SDPA
