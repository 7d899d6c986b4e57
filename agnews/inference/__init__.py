"""Applying a trained classifier: the `Classifier` Python API, the `predict` output writer, export."""

from agnews.inference.classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]
