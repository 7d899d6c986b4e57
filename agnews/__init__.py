"""Fine-tune a pretrained transformer encoder on AG News with PyTorch Lightning."""

import importlib

# Imported on first use, so `from agnews.inference import Classifier` does not load the training DataModule.
_EXPORTS = {
    "AG_NEWS_CLASSES": "agnews.data.datamodule",
    "AGNewsDataModule": "agnews.data.datamodule",
    "AGNewsClassifier": "agnews.modeling.module",
    "AGNewsError": "agnews.errors",
    "Classifier": "agnews.inference.classifier",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agnews' has no attribute {name!r}")
