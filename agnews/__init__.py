"""Fine-tune a pretrained transformer encoder on AG News with PyTorch Lightning."""

from agnews.data import AG_NEWS_CLASSES, AGNewsDataModule
from agnews.errors import AGNewsError
from agnews.model import AGNewsClassifier

__all__ = ["AG_NEWS_CLASSES", "AGNewsClassifier", "AGNewsDataModule", "AGNewsError"]
