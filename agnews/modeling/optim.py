"""What AdamW trains and how: parameter groups by kind (no weight decay on biases and norms), layer-wise
learning-rate decay, and freezing the lowest layers, all by the encoder's '.layer.N.' names."""

import re

from torch import nn

from agnews.errors import AGNewsError

# Normalization layers by kind: torch's own plus any Hugging Face class named like one (T5LayerNorm, LlamaRMSNorm...).
_TORCH_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)  # BatchNorm*, InstanceNorm*: by name, below


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _TORCH_NORMS) or "norm" in type(module).__name__.lower()


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weights only: biases and every normalization weight are excluded, whatever they are named."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            (no_decay if name == "bias" or _is_norm(module) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


_NUMBERED_LAYER = re.compile(r"\.layer\.(\d+)\.")


def require_numbered_layers(model: nn.Module, option: str, off: str) -> None:
    """Options that act per encoder layer find the layers by name: refuse an encoder that names them otherwise."""
    if not any(_NUMBERED_LAYER.search(n) for n, _ in model.named_parameters()):
        raise AGNewsError(
            f"{option} needs an encoder whose layers are named '.layer.N.' (BERT, DistilBERT, MPNet, RoBERTa); "
            f"{type(model).__name__} names them otherwise: {off}"
        )


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter in the encoder: 0 embeddings, i + 1 for layer i, num_layers + 1 pooler and head."""
    match = _NUMBERED_LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embeddings" in name else num_layers + 1


def freeze_lowest_layers(model: nn.Module, count: int) -> None:
    """Stop training the embeddings and the lowest `count` encoder layers (named '.layer.N.')."""
    num_layers = model.config.num_hidden_layers
    if count >= num_layers:
        raise AGNewsError(
            f"freeze_layers={count} leaves none of the encoder's {num_layers} layers to train; "
            f"set --model.freeze_layers to at most {num_layers - 1} (0: train every layer)"
        )
    require_numbered_layers(model, "freeze_layers", "set --model.freeze_layers 0")
    for name, param in model.named_parameters():
        if layer_depth(name, num_layers) <= count:
            param.requires_grad_(False)


def parameter_groups(
    model: nn.Module, weight_decay: float, learning_rate: float, layer_decay: float = 1.0
) -> list[dict]:
    """AdamW groups: weight decay by parameter kind and, with `layer_decay` < 1, a learning rate that shrinks
    by that factor per layer from the head down to the embeddings (layer-wise learning-rate decay)."""
    groups = weight_decay_groups(model, weight_decay)
    if layer_decay == 1.0:
        return groups
    num_layers = model.config.num_hidden_layers
    require_numbered_layers(model, f"layer_decay={layer_decay}", "use layer_decay 1.0")
    names = {id(p): n for n, p in model.named_parameters()}
    split = []
    for group in groups:
        by_depth: dict[int, list] = {}
        for param in group["params"]:
            by_depth.setdefault(layer_depth(names[id(param)], num_layers), []).append(param)
        for depth, params in sorted(by_depth.items()):
            lr = learning_rate * layer_decay ** (num_layers + 1 - depth)
            split.append({"params": params, "weight_decay": group["weight_decay"], "lr": lr})
    return split
