import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from agnews.checkpoints import read_checkpoint
from agnews.modeling.module import AGNewsClassifier
from agnews.precision import CPU
from agnews.train import Trainer, cli_main
from agnews.training.bf16_weights import BF16Weights
from tests.conftest import fit_args
from tests.test_capabilities import BF16_PLUGIN as PLUGIN
from tests.test_model import tiny_datamodule
from tests.test_reliability import fit_with_signal


@pytest.mark.parametrize(
    "native, precision, plugin, named",
    [
        (True, "auto", BF16Weights, "bf16-mixed"),
        (True, None, BF16Weights, "bf16-mixed"),
        (True, "bf16-mixed", MixedPrecision, "bf16-mixed"),  # named: Lightning's own autocast, the A/B switch
        (True, "32-true", Precision, "32-true"),
        (False, "auto", Precision, "32-true"),  # emulated bf16: nothing changes
        (False, "bf16-mixed", MixedPrecision, "bf16-mixed"),
    ],
)
def test_the_plugin_each_precision_resolves_to(native, precision, plugin, named, monkeypatch):
    monkeypatch.setattr("agnews.precision.cpu", lambda: CPU("Test CPU", frozenset()))
    monkeypatch.setattr("agnews.precision.cpu_bf16", lambda: (native, "avx512_bf16" if native else "none"))
    trainer = Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
    assert type(trainer.precision_plugin) is plugin and trainer.precision == named


def test_a_named_precision_plugin_wins_over_auto(monkeypatch):
    monkeypatch.setattr("agnews.precision.cpu_bf16", lambda: (False, "none"))
    trainer = Trainer(accelerator="cpu", plugins=[BF16Weights()], logger=False, enable_progress_bar=False)
    assert type(trainer.precision_plugin) is BF16Weights


class StepLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(
    backbone, data_dir, root, plugins=None, precision="32-true", ckpt_path=None, callbacks_extra=(), **trainer_kwargs
):
    torch.manual_seed(0)
    dm = tiny_datamodule(backbone, data_dir, root)
    model = AGNewsClassifier(backbone=str(backbone), learning_rate=1e-3, warmup_ratio=0.25)
    losses = StepLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        precision=None if plugins else precision,
        plugins=plugins,
        default_root_dir=root,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses, *callbacks_extra],
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, model, losses.losses


def test_training_follows_fp32_and_the_model_is_fp32_again_after_it(tiny_bert, data_dir, tmp_path):
    _, reference, fp32 = fit(tiny_bert, data_dir, tmp_path / "fp32", enable_checkpointing=False)
    _, autocast, stock = fit(
        tiny_bert, data_dir, tmp_path / "stock", precision="bf16-mixed", enable_checkpointing=False
    )
    plugin = BF16Weights()
    trainer, model, kept = fit(tiny_bert, data_dir, tmp_path / "kept", plugins=[plugin])
    assert len(kept) == len(fp32) == 16
    # bf16 rounding alone: the same training as fp32's, as close as Lightning's autocast is
    assert kept == pytest.approx(fp32, abs=0.03)
    gap = lambda losses: max(abs(a - b) for a, b in zip(losses, fp32, strict=True))  # noqa: E731
    assert gap(kept) <= 2 * gap(stock) + 0.005
    # after the run: fp32 weights, the trained masters (not their bf16 rounding), and no hook left behind
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not plugin._masters and plugin._hook is None
    # trained as fp32 trains: the distance to fp32's weights is a small part of how far training moved them
    initial = dict(AGNewsClassifier(backbone=str(tiny_bert)).named_parameters())
    trained = dict(model.named_parameters())
    names = [n for n, p in reference.named_parameters() if p.requires_grad]
    flat = lambda weights: torch.cat([weights[n].detach().flatten() for n in names])  # noqa: E731
    fp32_weights = flat(dict(reference.named_parameters()))
    moved = (fp32_weights - flat(initial)).norm()
    assert (flat(trained) - fp32_weights).norm() < 0.1 * moved
    # the checkpoint written mid-run holds fp32 masters: the same weights as the model's after the run
    state = read_checkpoint(trainer.checkpoint_callback.best_model_path)["state_dict"]
    last = read_checkpoint(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path)
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())
    for name, value in last["state_dict"].items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_frozen_weights_come_back_exactly(tiny_bert, data_dir, tmp_path):
    before = AGNewsClassifier(backbone=str(tiny_bert)).model.state_dict()
    _, model, _ = fit(tiny_bert, data_dir, tmp_path, plugins=[BF16Weights()], enable_checkpointing=False)
    after = model.model.state_dict()
    frozen = [n for n, p in model.model.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)


class EditWeights(L.Callback):
    """Edits weights in place, as weight-averaging or pruning callbacks do: at the start of epoch 1 (mid-run)
    the classifier's weight is zeroed, and at the end of training its bias is set to 1."""

    def __init__(self):
        self.after_edit = None

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                module.model.classifier.weight.zero_()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and self.after_edit is None:  # the first step after the edit
            self.after_edit = module.model.classifier.weight.detach().float().abs().max().item()

    def on_train_end(self, trainer, module):
        with torch.no_grad():
            module.model.classifier.bias.fill_(1.0)


def test_weights_edited_in_place_outside_the_optimizer_are_kept(tiny_bert, data_dir, tmp_path):
    edits = EditWeights()
    trainer, model, _ = fit(tiny_bert, data_dir, tmp_path, plugins=[BF16Weights()], callbacks_extra=[edits])
    # one AdamW step from zero moves a weight by about the learning rate (1e-3), not back to its trained size
    assert edits.after_edit < 0.01
    assert torch.equal(model.model.classifier.bias, torch.ones_like(model.model.classifier.bias))
    assert model.model.classifier.bias.dtype == torch.float32


def test_sigint_then_resume_matches_an_uninterrupted_run(tiny_bert, data_dir, tmp_path, capsys):
    # as tests/test_reliability.py's fp32 case: no dropout, no kept outputs, so the two runs can be identical
    common = ("--trainer.max_epochs", "3", "--model.dropout", "0.0", "--model.frozen_outputs_gb", "0", *PLUGIN)
    reference = cli_main(["fit", *fit_args(tiny_bert, data_dir, tmp_path / "ref", *common)])
    root = tmp_path / "run"
    code, stderr = fit_with_signal(tmp_path, 13, signal.SIGINT, fit_args(tiny_bert, data_dir, root, *common), capsys)
    assert code == 128 + signal.SIGINT, stderr[-2000:]
    resumed = cli_main(["fit", *fit_args(tiny_bert, data_dir, root, *common), "--ckpt_path", "last"])
    assert resumed.trainer.global_step == reference.trainer.global_step == 24
    final = read_checkpoint(resumed.trainer.checkpoint_callback.last_model_path)["state_dict"]
    expected = read_checkpoint(reference.trainer.checkpoint_callback.last_model_path)["state_dict"]
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-6, rtol=1e-5)
