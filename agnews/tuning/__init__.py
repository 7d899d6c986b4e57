"""The hyperparameter search behind `python -m agnews.search`: the space, the Optuna study, its results."""
