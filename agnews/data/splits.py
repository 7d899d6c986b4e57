"""Seeded stratified splits of a split's rows (validation out of train, the `train_size`/`test_size` subsets), by
`datasets`' own stratified train/test split (scikit-learn's StratifiedShuffleSplit)."""

import numpy as np

from agnews.errors import AGNewsError


def stratified_split(labels: np.ndarray, size: int | float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (taken, rest), both sorted: `size` rows (a count, or a fraction if a float < 1) with every
    class in proportion, and the others."""
    import datasets

    n = len(labels)
    count = int(round(size * n)) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < count < n:
        raise AGNewsError(
            f"{what}={size!r} must leave rows on both sides of the split of {n} rows (a count 1..{n - 1} or a fraction in (0, 1))"
        )
    classes = np.unique(labels)
    rows = datasets.Dataset.from_dict(
        {"label": np.searchsorted(classes, labels), "row": np.arange(n)},
        features=datasets.Features(
            {"label": datasets.ClassLabel(num_classes=len(classes)), "row": datasets.Value("int64")}
        ),
    )
    try:
        parts = rows.train_test_split(test_size=count, stratify_by_column="label", seed=seed).with_format("numpy")
    except ValueError as err:
        raise AGNewsError(
            f"{what}={size!r} cannot split {n} rows of {len(classes)} classes with every class on both sides "
            f"({str(err).splitlines()[0]}); choose another {what}, or give each class more rows"
        ) from None
    return np.sort(parts["test"]["row"]), np.sort(parts["train"]["row"])
