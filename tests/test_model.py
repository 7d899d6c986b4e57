import math
import shutil

import lightning as L
import pytest
import torch

from agnews.data.datamodule import AGNewsDataModule
from agnews.errors import AGNewsError
from agnews.internals import attention_of
from agnews.modeling.attention import PADDED_SDPA
from agnews.modeling.module import AGNewsClassifier
from agnews.modeling.optim import weight_decay_groups


def test_weight_decay_excludes_biases_and_every_norm_by_kind(tiny_distilbert):
    model = AGNewsClassifier(backbone=str(tiny_distilbert), freeze_embeddings=False, freeze_layers=0)
    decay, no_decay = weight_decay_groups(model.model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    excluded = {names[id(p)] for p in no_decay["params"]}
    assert decayed | excluded == set(names.values()) and not decayed & excluded
    # DistilBERT's norms are not called LayerNorm: a name rule would decay them
    assert "distilbert.transformer.layer.0.sa_layer_norm.weight" in excluded
    assert "distilbert.transformer.layer.0.output_layer_norm.weight" in excluded
    assert "distilbert.embeddings.LayerNorm.weight" in excluded
    assert "distilbert.transformer.layer.0.attention.q_lin.bias" in excluded
    assert "distilbert.transformer.layer.0.attention.q_lin.weight" in decayed
    assert "classifier.weight" in decayed
    assert all(not n.endswith("bias") for n in decayed)


def test_bert_layernorm_excluded(tiny_bert):
    model = AGNewsClassifier(backbone=str(tiny_bert))
    _, no_decay = weight_decay_groups(model.model, 0.01)
    names = {id(p): n for n, p in model.model.named_parameters()}
    assert "bert.encoder.layer.3.output.LayerNorm.weight" in {names[id(p)] for p in no_decay["params"]}


def test_model_trains_with_dropout_on(tiny_bert):
    model = AGNewsClassifier(backbone=str(tiny_bert))
    assert model.model.training  # from_pretrained alone would leave dropout off


def tiny_datamodule(backbone, data_dir, root) -> AGNewsDataModule:
    return AGNewsDataModule(
        dataset=str(data_dir),
        tokenizer=str(backbone),
        max_length=32,
        val_size=32,
        batch_size=16,
        cache_dir=str(root / "cache"),
    )


def fit_tiny(backbone, data_dir, root, learning_rate=1e-3, model_kwargs=None, **trainer_kwargs):
    dm = tiny_datamodule(backbone, data_dir, root)
    model = AGNewsClassifier(
        backbone=str(backbone), learning_rate=learning_rate, warmup_ratio=0.25, **(model_kwargs or {})
    )
    trainer = L.Trainer(
        accelerator="cpu",
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=dm)
    return trainer, model, dm


def test_linear_warmup_then_decay_per_step(tiny_bert, data_dir, tmp_path):
    trainer, model, _ = fit_tiny(tiny_bert, data_dir, tmp_path, max_epochs=2, logger=False, enable_checkpointing=False)
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    total = trainer.estimated_stepping_batches  # 128 rows / 16 x 2 epochs
    assert total == 16 and trainer.global_step == 16
    lrs = [scheduler.scheduler.lr_lambdas[0](step) * 1e-3 for step in range(total + 1)]
    assert lrs[0] == 0 and lrs[4] == pytest.approx(1e-3) and lrs[-1] == 0
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5], strict=False)) and all(
        a > b for a, b in zip(lrs[4:-1], lrs[5:], strict=False)
    )


def test_checkpoint_is_self_contained(tmp_path, data_dir, tiny_bert):
    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_bert, backbone)
    trainer, model, dm = fit_tiny(backbone, data_dir, tmp_path, max_epochs=1, logger=False)
    texts = ["Nasa space chip report", "The team won the match"]
    model.eval()
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(encoded["input_ids"], encoded["attention_mask"])
    ckpt = trainer.checkpoint_callback.best_model_path
    shutil.rmtree(backbone)  # no copy of the original encoder or tokenizer is left

    loaded = AGNewsClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    loaded.eval()
    assert loaded.hparams.class_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert loaded.model.config.id2label[3] == "Sci/Tech"
    encoded = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        got = loaded(encoded["input_ids"], encoded["attention_mask"])
    torch.testing.assert_close(got, expected)


def test_unknown_backbone_folder():
    with pytest.raises(AGNewsError, match="does not exist"):
        AGNewsClassifier(backbone="./no/such/folder")


def test_unreachable_hub_backbone():
    with pytest.raises(
        AGNewsError, match="cannot download backbone config 'distilbert-base-uncased': HF_HUB_OFFLINE is set"
    ):
        AGNewsClassifier(backbone="distilbert-base-uncased")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(AGNewsError, match="without config.json"):
        AGNewsClassifier(backbone=str(tmp_path))


def test_missing_package_backbone():
    with pytest.raises(AGNewsError, match="not installed"):
        AGNewsClassifier(backbone="pkg:no_such_package_xyz/model")


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_distilbert"])
def test_dropout_option_replaces_every_dropout(backbone, request):
    folder = request.getfixturevalue(backbone)
    model = AGNewsClassifier(backbone=str(folder), dropout=0.0, attention="eager")
    dropouts = [m for m in model.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    assert attention_of(model.model) == "eager"
    default = AGNewsClassifier(backbone=str(folder), dropout=None)  # None: the pretrained ones
    assert any(m.p > 0 for m in default.model.modules() if isinstance(m, torch.nn.Dropout))


def test_fast_path_options_survive_the_checkpoint(tmp_path, data_dir, tiny_bert):
    dm = AGNewsDataModule(
        dataset=str(data_dir), tokenizer=str(tiny_bert), max_length=32, val_size=32, cache_dir=str(tmp_path / "cache")
    )
    model = AGNewsClassifier(
        backbone=str(tiny_bert), learning_rate=1e-2, freeze_embeddings=True, dropout=0.0, attention="eager"
    )
    frozen = model.model.get_input_embeddings().weight.detach().clone()
    head = model.model.classifier.weight.detach().clone()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert torch.equal(model.model.get_input_embeddings().weight, frozen)
    assert not torch.equal(model.model.classifier.weight, head)
    loaded = AGNewsClassifier.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert attention_of(loaded.model) == "eager"
    assert all(m.p == 0.0 for m in loaded.model.modules() if isinstance(m, torch.nn.Dropout))
    assert not loaded.model.get_input_embeddings().weight.requires_grad


class Spy(AGNewsClassifier):
    """Records the attention kernel each training and validation step ran with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(("train", attention_of(self.model)))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen.append(("val", attention_of(self.model)))
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize(
    "attention, precision, trained",
    [("eager", "32-true", "eager"), ("auto", "bf16-mixed", "eager"), ("auto", "32-true", "sdpa")],
)
def test_training_attention_and_evaluation_attention(attention, precision, trained, tmp_path, data_dir, tiny_bert):
    dm = AGNewsDataModule(
        dataset=str(data_dir),
        tokenizer=str(tiny_bert),
        max_length=32,
        val_size=32,
        batch_size=32,
        cache_dir=str(tmp_path / "cache"),
    )
    model = Spy(backbone=str(tiny_bert), attention=attention)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        val_check_interval=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
    )
    trainer.fit(model, datamodule=dm)
    assert {impl for stage, impl in model.seen if stage == "train"} == {trained}
    assert {impl for stage, impl in model.seen if stage == "val"} == {model.fast.evaluation_attention}
    assert model.fast.evaluation_attention in ("sdpa", PADDED_SDPA)  # the padded keys on a CPU with AMX
    assert [s for s, _ in model.seen].count("val") >= 4  # validation ran mid-epoch, training went on after it


def test_layer_decay_scales_learning_rates_from_the_head_down(tiny_bert):
    from agnews.modeling.optim import parameter_groups

    model = AGNewsClassifier(backbone=str(tiny_bert), freeze_embeddings=False, freeze_layers=0)
    groups = parameter_groups(model.model, 0.01, 1e-3, layer_decay=0.5)
    names = {id(p): n for n, p in model.model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert set(lr_of) == set(names.values())  # every parameter once
    # 4 layers: head 1e-3, layer 3 5e-4, layer 2 2.5e-4, ... layer 0 6.25e-5, embeddings 3.125e-5
    assert lr_of["classifier.weight"] == pytest.approx(1e-3)
    assert lr_of["bert.encoder.layer.3.output.dense.weight"] == pytest.approx(5e-4)
    assert lr_of["bert.encoder.layer.2.output.LayerNorm.weight"] == pytest.approx(2.5e-4)
    assert lr_of["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(6.25e-5)
    assert lr_of["bert.embeddings.word_embeddings.weight"] == pytest.approx(3.125e-5)
    # the default run's frozen layers (model.freeze_layers 2) are in no group: only layers 2-3 and the head train
    default = AGNewsClassifier(backbone=str(tiny_bert))
    trained = {n for n, p in default.model.named_parameters() if p.requires_grad}
    assert trained and all(
        any(part in n for part in (".layer.2.", ".layer.3.", "pooler", "classifier")) for n in trained
    )
    assert {g["weight_decay"] for g in groups if any(names[id(p)].endswith("bias") for p in g["params"])} == {0.0}
    assert len(parameter_groups(model.model, 0.01, 1e-3)) == 2  # off: the two weight-decay groups


def test_mean_pooling_and_label_smoothing(tiny_bert):
    torch.manual_seed(0)
    cls_model = AGNewsClassifier(backbone=str(tiny_bert)).eval()
    mean_model = AGNewsClassifier(backbone=str(tiny_bert), pooling="mean", label_smoothing=0.1).eval()
    assert "bert.pooler.dense.weight" in cls_model.model.state_dict()
    assert mean_model.model.bert.pooler is None  # nothing reads it: not built
    assert not mean_model.model.load_state_dict(cls_model.model.state_dict(), strict=False).missing_keys
    ids = torch.tensor([[2, 40, 41, 3, 0, 0], [2, 40, 41, 3, 42, 43]])
    mask = (ids != 0).long()
    with torch.no_grad():
        pooled = mean_model(ids, mask)
        hidden = mean_model.model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = mean_model.model.classifier(hidden[0, :4].mean(0))
        torch.testing.assert_close(pooled[0], expected)  # padding is left out of the mean
        assert not torch.allclose(pooled, cls_model(ids, mask))
    labels = pooled.argmax(-1)  # the predicted classes: smoothing moves probability away from them
    plain = torch.nn.functional.cross_entropy(pooled, labels)
    assert mean_model.loss_fn(pooled, labels) > plain  # smoothing puts mass on the wrong classes too
    with pytest.raises(AGNewsError, match="pooling='max'"):
        AGNewsClassifier(backbone=str(tiny_bert), pooling="max")


def test_mean_pooling_through_an_mpnet_head(tiny_mpnet):
    # MPNet's (and RoBERTa's) head is dense -> tanh -> out_proj on position 0: the mean must arrive there
    torch.manual_seed(0)
    model = AGNewsClassifier(backbone=str(tiny_mpnet), pooling="mean", attention="eager").eval()
    ids = torch.tensor([[2, 40, 41, 3, 0, 0], [2, 40, 41, 3, 42, 43]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = model(ids, mask)
        hidden = model.model.mpnet(input_ids=ids, attention_mask=mask).last_hidden_state
        head = model.model.classifier
        expected = head.out_proj(torch.tanh(head.dense(hidden[0, :4].mean(0))))
    torch.testing.assert_close(logits[0], expected)
    assert logits.shape == (2, 4)
    model.train()
    loss = model.loss_fn(model(ids, mask), torch.tensor([0, 1]))
    loss.backward()
    assert model.model.mpnet.encoder.layer[-1].attention.attn.q.weight.grad is not None


def test_mean_pooling_through_distilberts_own_head(tiny_distilbert):
    # DistilBERT's head is pre_classifier -> ReLU -> dropout -> classifier: the mean goes through all of it
    torch.manual_seed(0)
    model = AGNewsClassifier(backbone=str(tiny_distilbert), pooling="mean", dropout=0.0).eval()
    ids = torch.tensor([[2, 40, 41, 3, 0, 0], [2, 40, 41, 3, 42, 43]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = model.model.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state
        head = model.model
        expected = head.classifier(torch.relu(head.pre_classifier(hidden[1].mean(0))))
        torch.testing.assert_close(model(ids, mask)[1], expected)


@pytest.mark.parametrize("encoder", ["tiny_bert", "tiny_distilbert", "tiny_mpnet"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_every_trainable_parameter_gets_a_gradient(encoder, pooling, request):
    # what DDP needs without find_unused_parameters: no parameter computed and then left out of the loss
    model = AGNewsClassifier(backbone=str(request.getfixturevalue(encoder)), pooling=pooling, freeze_embeddings=True)
    ids = torch.tensor([[2, 40, 41, 3, 0, 0], [2, 40, 41, 3, 42, 43]])
    model.loss_fn(model(ids, (ids != 0).long()), torch.tensor([0, 1])).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_mean_pooling_is_refused_for_an_architecture_without_a_mean_head(tmp_path):
    from transformers import BertTokenizerFast, GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=40, n_positions=16)).save_pretrained(tmp_path)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "a"])}).save_pretrained(tmp_path)
    with pytest.raises(
        AGNewsError, match="pooling='mean' is built for bert, distilbert, .* not gpt2; use --model.pooling cls"
    ):
        AGNewsClassifier(backbone=str(tmp_path), pooling="mean")


def test_layer_decay_is_refused_where_layers_are_named_otherwise():
    from types import SimpleNamespace

    from agnews.modeling.optim import parameter_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))  # layers named "0.", "1."
    model.config = SimpleNamespace(num_hidden_layers=2)
    with pytest.raises(AGNewsError, match="layer_decay=0.8 needs an encoder whose layers are named"):
        parameter_groups(model, 0.01, 1e-3, layer_decay=0.8)
    assert len(parameter_groups(model, 0.01, 1e-3, layer_decay=1.0)) == 2


def test_the_fused_adamw_trains_as_torchs_reference_adamw(tiny_bert, data_dir, tmp_path):
    """The CPU fast path's fused AdamW is an implementation choice only: the same losses and weights as torch's
    single-tensor AdamW (its CPU default) over the same steps, within float tolerance."""
    import copy

    from agnews.modeling.optim import parameter_groups

    trainer, fitted, _ = fit_tiny(tiny_bert, data_dir, tmp_path, max_steps=2, logger=False, enable_checkpointing=False)
    assert trainer.optimizers[0].defaults["fused"] is True  # what fit runs on a CPU

    torch.manual_seed(0)
    model = AGNewsClassifier(backbone=str(tiny_bert), learning_rate=1e-3, weight_decay=0.1, layer_decay=0.8)
    reference = copy.deepcopy(model)
    fused = model.optimizer()
    hp = reference.hparams
    plain = torch.optim.AdamW(
        parameter_groups(reference.model, hp.weight_decay, hp.learning_rate, hp.layer_decay),
        lr=hp.learning_rate,
        foreach=False,
    )
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        ids = torch.randint(5, model.model.config.vocab_size, (8, 12), generator=generator)
        mask, labels = torch.ones_like(ids), torch.randint(0, 4, (8,), generator=generator)
        losses = []
        for module, optimizer in ((model, fused), (reference, plain)):
            loss = module.loss_fn(module(ids, mask), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        if name.endswith("key.bias"):
            # softmax ignores a bias added to every key: its gradient is rounding noise, which Adam scales to
            # full-size steps whose sign differs between the two implementations
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(
        model.model.classifier.weight, AGNewsClassifier(backbone=str(tiny_bert)).model.classifier.weight
    )


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_distilbert", "tiny_mpnet"])
def test_freeze_layers_trains_only_the_layers_above(backbone, request):
    folder = request.getfixturevalue(backbone)
    model = AGNewsClassifier(backbone=str(folder), freeze_layers=1, learning_rate=1e-2, warmup_ratio=0.0)
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    optimizer = model.optimizer()
    ids = torch.randint(5, 60, (4, 12))
    loss = torch.nn.functional.cross_entropy(model(ids, torch.ones_like(ids)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n in before if "embeddings" in n or ".layer.0." in n}
    assert frozen and not frozen & changed  # embeddings and the lowest layer as pretrained
    assert any(".layer.1." in n for n in changed) and any(n.startswith("classifier") for n in changed)
    assert all(not p.requires_grad for n, p in model.model.named_parameters() if n in frozen)


def test_freeze_layers_refuses_leaving_nothing_to_train(tiny_bert):
    with pytest.raises(AGNewsError, match="freeze_layers=4 leaves none of the encoder's 4 layers to train"):
        AGNewsClassifier(backbone=str(tiny_bert), freeze_layers=4)
    with pytest.raises(AGNewsError, match="freeze_layers=-1 must be 0"):
        AGNewsClassifier(backbone=str(tiny_bert), freeze_layers=-1)


class StepLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_bf16_mixed_trains_as_the_fp32_reference(tiny_bert, data_dir, tmp_path):
    """`precision auto` picks bf16-mixed on a CPU with native bf16: with every fast-path default (fused AdamW,
    frozen embeddings and lower layers, no dropout, eager attention under bf16) its training follows the fp32
    run of the same seed step for step within bf16's rounding, until the high learning rate makes the two
    trajectories part; both end as well trained."""
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        L.seed_everything(0)
        losses = StepLosses()
        trainer, model, _ = fit_tiny(
            tiny_bert,
            data_dir,
            tmp_path / precision,
            learning_rate=1e-2,
            max_epochs=8,
            precision=precision,
            callbacks=[losses],
            logger=False,
            enable_checkpointing=False,
        )
        assert trainer.precision == precision and trainer.global_step == 64
        assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed precision keeps fp32 weights
        metrics = trainer.callback_metrics
        runs[precision] = (losses.losses, float(metrics["train_loss_epoch"]), float(metrics["val_loss"]))
    (fp32, fp32_train, fp32_val), (bf16, bf16_train, bf16_val) = runs["32-true"], runs["bf16-mixed"]
    assert bf16[:20] == pytest.approx(fp32[:20], abs=2e-3)
    assert max(fp32_val, bf16_val) < math.log(4) - 0.15  # both learned: not two flat lines at chance
    assert bf16_train == pytest.approx(fp32_train, abs=0.15) and bf16_val == pytest.approx(fp32_val, abs=0.15)
