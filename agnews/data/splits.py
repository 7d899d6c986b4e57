"""Seeded stratified splits of a split's rows (validation out of train, the `train_size`/`test_size` subsets), by
`datasets`' own stratified train/test split (scikit-learn's StratifiedShuffleSplit)."""

import numpy as np

from agnews.errors import AGNewsError
from agnews.internals import stratified_indices


def stratified_split(labels: np.ndarray, size: int | float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (taken, rest), both sorted: `size` rows (a count, or a fraction if a float < 1) with every
    class in proportion, and the others."""
    n = len(labels)
    count = int(round(size * n)) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < count < n:
        raise AGNewsError(
            f"{what}={size!r} must leave rows on both sides of the split of {n} rows (a count 1..{n - 1} or a fraction in (0, 1))"
        )
    classes, counts = np.unique(labels, return_counts=True)
    try:
        if counts.min() < 2:  # datasets' own check, in its words
            raise ValueError("the least populated class has only 1 member, which is too few")
        rest_rows, taken_rows = stratified_indices(labels, n - count, count, seed)
    except ValueError as err:
        raise AGNewsError(
            f"{what}={size!r} cannot split {n} rows of {len(classes)} classes with every class on both sides "
            f"({str(err).splitlines()[0]}); choose another {what}, or give each class more rows"
        ) from None
    return np.sort(taken_rows), np.sort(rest_rows)
