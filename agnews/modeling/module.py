"""The classifier: a Hugging Face encoder with a sequence-classification head, trained with AdamW."""

import json
import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from transformers import AutoConfig, AutoModelForSequenceClassification

from agnews.errors import AGNewsError
from agnews.modeling import backbone as backbones
from agnews.modeling.fast_paths import FastPaths
from agnews.modeling.losses import distillation_loss
from agnews.modeling.optim import freeze_lowest_layers, parameter_groups
from agnews.precision import is_bf16
from agnews.training.budget import LinearSchedule


class AGNewsClassifier(L.LightningModule):
    def __init__(
        self,
        backbone: str = "distilbert-base-uncased",
        num_classes: int = 4,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        freeze_embeddings: bool = True,
        freeze_layers: int = 2,
        dropout: float | None = 0.0,
        attention: str | None = "auto",
        class_names: list[str] | None = None,
        backbone_config: dict[str, Any] | None = None,
        pooling: str = "cls",
        label_smoothing: float = 0.0,
        layer_decay: float = 1.0,
        chosen_by: str | None = None,
        frozen_outputs_gb: float = 2.0,
        distill_weight: float = 0.8,
        distill_temperature: float = 4.0,
        first_token_only: bool = True,
        padded_attention: bool = True,
    ):
        """
        Args:
            backbone: hub id, local folder, or `pkg:<module>/<folder>` of a pretrained encoder.
            warmup_ratio: fraction of all optimizer steps spent warming the learning rate up from 0.
            freeze_embeddings: keep the word embeddings as pretrained. On a CPU their dense gradient and
                AdamW update (half of MiniLM's parameters) cost a large share of each step.
            freeze_layers: keep the lowest N encoder layers as pretrained too (with the embeddings): no backward
                pass through them and no AdamW update, so each frozen layer costs a forward pass only (2 of
                MiniLM's 6: training steps 1.35x as fast, the same accuracy; docs/performance.md). 0: train all.
            dropout: replaces every dropout probability of the encoder and head (None: keep the pretrained ones).
                On a CPU, drawing dropout masks costs about a fifth of a training step.
            attention: attention implementation while training (`eager`, `sdpa`; None: the transformers
                default, SDPA; `auto`: eager under bf16 autocast, where SDPA's CPU kernel is slow, SDPA under
                fp32). Evaluation runs SDPA (docs/performance.md).
            class_names: set from the data at fit time; saved so a checkpoint can name its predictions.
            backbone_config: set from the backbone at first load; a checkpoint rebuilds the encoder from it
                without downloading or reading the original weights.
            pooling: `cls` (the model's own head: first token, through BERT's pooler; the last layer is then
                computed at that token only, agnews.modeling.first_token) or `mean` (the average
                of the last hidden states over real tokens, fed to the architecture's own head: BERT, DistilBERT,
                RoBERTa, XLM-R, MPNet; agnews.modeling.pooling). Both export (`mean` with its code, agnews.export).
            label_smoothing: cross-entropy label smoothing (0: off).
            layer_decay: layer-wise learning-rate decay: each layer below the head trains at this factor of
                the one above (1: off, one learning rate for all).
            chosen_by: set by the CLI when it chose the encoder and data (hub or offline default), saying which
                and why; kept in the checkpoint for the test report and TensorBoard's HPARAMS.
            frozen_outputs_gb: memory (GiB) for keeping the frozen layers' outputs of every training and
                validation row from the first epoch, so later epochs run only the trained layers (with frozen
                layers, dropout 0 and more than one epoch; agnews.modeling.frozen_outputs). 0: compute them every epoch.
            distill_weight: with a teacher file (`--data.teacher`), the training loss is (1 - w) x cross-entropy
                on the labels + w x the distillation loss (KL divergence to the teacher's softened
                distribution); both are logged (`train_ce`, `train_kd`). Unused without a teacher.
            distill_temperature: the temperature both distributions are softened by (1: plain softmax).
            first_token_only: with a first-token head (`pooling cls`), compute the last layer at the first token
                only (agnews.modeling.first_token: the same logits); False: the whole layer, as transformers does.
            padded_attention: evaluate with SDPA's keys padded to a multiple of 16 under bf16 on a CPU with AMX
                (agnews.modeling.attention: the same logits to bf16 rounding, faster); False: plain SDPA.
        """
        super().__init__()
        if not 0 <= warmup_ratio < 1:
            raise AGNewsError(f"warmup_ratio={warmup_ratio} must be in [0, 1)")
        self.save_hyperparameters()
        self.tokenizer = None
        if dropout is not None and not 0 <= dropout < 1:
            raise AGNewsError(f"dropout={dropout} must be in [0, 1)")
        if pooling not in ("cls", "mean"):
            raise AGNewsError(f"pooling={pooling!r} must be 'cls' or 'mean'")
        if not 0 <= label_smoothing < 1:
            raise AGNewsError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        if freeze_layers < 0:
            raise AGNewsError(f"freeze_layers={freeze_layers} must be 0 (none) or more")
        if frozen_outputs_gb < 0:
            raise AGNewsError(f"frozen_outputs_gb={frozen_outputs_gb} must be 0 (off) or more")
        if not 0 <= distill_weight <= 1:
            raise AGNewsError(f"distill_weight={distill_weight} must be in [0, 1] (0: the labels only)")
        if not distill_temperature > 0:
            raise AGNewsError(f"distill_temperature={distill_temperature} must be above 0 (e.g. 2)")
        if not 0 < layer_decay <= 1:
            raise AGNewsError(f"layer_decay={layer_decay} must be in (0, 1]")
        if attention not in (None, "auto", "eager", "sdpa"):
            raise AGNewsError(f"attention={attention!r} must be auto, eager or sdpa")
        attention_kwargs = {"attn_implementation": attention} if attention in ("eager", "sdpa") else {}
        if backbone_config is None:
            config = backbones.load_config(backbone)
            for key, value in backbones.dropout_overrides(config, dropout).items():
                setattr(config, key, value)
            config.num_labels = num_classes
            config = backbones.classifier_config(config, pooling)
            self.model = backbones.load_classifier(backbone, config, **attention_kwargs)
            self.tokenizer = backbones.load_tokenizer(backbone)
            self.hparams.backbone_config = json.loads(self.model.config.to_json_string())
        else:
            config = backbones.classifier_config(AutoConfig.for_model(**backbone_config), pooling)
            self.model = AutoModelForSequenceClassification.from_config(config, **attention_kwargs)
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps each module's mode as found
        if freeze_embeddings:
            self.model.get_input_embeddings().weight.requires_grad_(False)
        if freeze_layers:
            freeze_lowest_layers(self.model, freeze_layers)
        if self.model.config.num_labels != num_classes:
            raise AGNewsError(
                f"the checkpoint's head has {self.model.config.num_labels} classes, not num_classes={num_classes}"
            )
        self.fast = FastPaths(self.model, first_token=first_token_only, padded_attention=padded_attention)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # plain accuracy (micro): torchmetrics' default is the macro average, i.e. balanced accuracy
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        # the test report's figures (agnews.training.report), per class
        self.test_details = MetricCollection(
            {
                "precision": MulticlassPrecision(num_classes, average=None),
                "recall": MulticlassRecall(num_classes, average=None),
                "f1": MulticlassF1Score(num_classes, average=None),
                "macro_f1": MulticlassF1Score(num_classes, average="macro"),
                "confusion": MulticlassConfusionMatrix(num_classes),
            }
        )

    @property
    def label_names(self) -> list[str]:
        """The class names the model predicts (from the data it was fitted on), else the class indices as text."""
        return list(self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)])

    def setup(self, stage: str) -> None:
        names = getattr(self.trainer.datamodule, "class_names", None)
        if names is None:
            return
        if len(names) != self.hparams.num_classes:
            raise AGNewsError(
                f"the data has {len(names)} classes ({', '.join(names)}) but num_classes={self.hparams.num_classes}; set --model.num_classes {len(names)}"
            )
        if self.hparams.class_names is None:
            self.hparams.class_names = list(names)
            self.model.config.id2label = dict(enumerate(names))
            self.model.config.label2id = {n: i for i, n in enumerate(names)}
            self.hparams.backbone_config = json.loads(self.model.config.to_json_string())

    # Training and evaluation are fastest with different attention kernels on a CPU: switch between them.
    def training_attention(self) -> str | None:
        if self.hparams.attention != "auto":
            return self.hparams.attention
        return "eager" if is_bf16(self.trainer.precision) else "sdpa"

    def on_train_start(self) -> None:
        self.fast.use_attention(self.training_attention())

    def on_fit_start(self) -> None:
        data = self.trainer.datamodule
        datasets = [getattr(data, "train_set", None), getattr(data, "val_set", None)]
        hp = self.hparams
        self.fast.start_fit(hp.freeze_layers, hp.frozen_outputs_gb, datasets, self.trainer.max_epochs)

    def teardown(self, stage: str) -> None:
        self.fast.end_fit()

    def on_validation_start(self) -> None:
        self.fast.use_evaluation_attention()

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "fit":
            self.fast.use_attention(self.training_attention())

    def on_test_start(self) -> None:
        self.fast.use_evaluation_attention()

    def on_predict_start(self) -> None:
        self.fast.use_evaluation_attention()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, stage: str | None = None) -> torch.Tensor:
        with self.fast.around(stage, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _step(self, batch: dict, stage: str, metric: MulticlassAccuracy) -> tuple[torch.Tensor, torch.Tensor]:
        # the loss and metrics in fp32 whatever the weights are (bf16 ones under agnews.training.bf16_weights)
        logits = self(batch["input_ids"], batch["attention_mask"], stage).float()
        loss = self.loss_fn(logits, batch["labels"])
        size = len(batch["labels"])
        if "teacher_logits" in batch and self.hparams.distill_weight > 0:  # only training batches carry them
            kd = distillation_loss(logits, batch["teacher_logits"], self.hparams.distill_temperature)
            self.log(f"{stage}_ce", loss, on_step=True, on_epoch=True, batch_size=size)
            self.log(f"{stage}_kd", kd, on_step=True, on_epoch=True, batch_size=size)
            weight = self.hparams.distill_weight
            loss = (1 - weight) * loss + weight * kd
        # update, not forward: the metrics are logged per epoch, so a per-batch value would be computed for nothing
        metric.update(logits, batch["labels"])
        on_step = stage == "train"
        # evaluation losses are averaged over every process (DDP), as the torchmetrics objects are
        self.log(
            f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=not on_step
        )
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, logits = self._step(batch, "val", self.val_acc)
        self.val_f1.update(logits, batch["labels"])
        self.log("val_f1", self.val_f1, on_step=False, on_epoch=True, batch_size=len(batch["labels"]))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        _, logits = self._step(batch, "test", self.test_acc)
        self.test_details.update(logits, batch["labels"])

    def on_test_epoch_end(self) -> None:
        names = self.label_names
        self.test_results = {key: value.cpu() for key, value in self.test_details.compute().items()}
        self.test_details.reset()
        self.log("test_f1", self.test_results["macro_f1"])
        for name, f1 in zip(names, self.test_results["f1"], strict=False):
            self.log(f"test_f1_{name.replace('/', '_')}", f1)  # no '/': TensorBoard would nest it

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(batch["input_ids"], batch["attention_mask"]).float().softmax(-1)
        return {"index": batch["index"], "probs": probs, "preds": probs.argmax(-1)}

    def optimizer(self) -> torch.optim.AdamW:
        hp = self.hparams
        groups = parameter_groups(self.model, hp.weight_decay, hp.learning_rate, hp.layer_decay)
        # On a CPU, torch's default AdamW loops over the tensors with several element-wise ops each; its fused
        # kernel is the same arithmetic in one pass over memory (docs/performance.md). A GPU keeps torch's
        # default (foreach), which also leaves Lightning's gradient clipping under fp16 AMP allowed.
        fused = all(p.device.type == "cpu" for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=fused or None)

    def configure_optimizers(self):
        optimizer = self.optimizer()
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(
            total
        ):  # no epoch limit (a time budget): one epoch until agnews.training.budget sizes the run
            total = max(1, self.trainer.num_training_batches // self.trainer.accumulate_grad_batches)
        # warm-up, then linear decay to zero at the last step (transformers' linear schedule), resizable by a budget
        self.lr_schedule = LinearSchedule(int(total), int(hp.warmup_ratio * int(total)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # Tokenizer and encoder config travel inside the checkpoint (as the text files of a model folder without
    # weights), so a checkpoint alone can tokenize and predict, with no network and no original backbone.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            files = backbones.tokenizer_to_files(self.tokenizer)
            files["config.json"] = self.model.config.to_json_string()
            checkpoint[backbones.CHECKPOINT_FILES_KEY] = files

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # mean-pooled BERT checkpoints of agnews <= 0.1 carry the pooler their head never read
        state, own = checkpoint.get("state_dict", {}), self.state_dict()
        for key in [k for k in state if ".pooler." in k and k not in own]:
            del state[key]
        files = checkpoint.get(backbones.CHECKPOINT_FILES_KEY)
        if files:
            self.tokenizer = backbones.tokenizer_from_files(files)
