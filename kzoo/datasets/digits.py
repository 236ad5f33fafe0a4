"""scikit-learn's 8x8 handwritten digits, read row by row as a sequence.

Each image becomes a sequence of 8 time steps (its rows) of 8 features (the
pixels of a row), scaled to [0, 1]. The split is fixed and stratified:
70% train, 15% validation, 15% test.
"""

import numpy as np

NAME = "sklearn_digits_rows"
SEQUENCE_LENGTH = 8
FEATURES = 8
NUM_CLASSES = 10
SPLITS = ("train", "validation", "test")
_SEED = 1234


def load(split):
    """Returns `(x, y)` for one split.

    Args:
        split: one of `"train"`, `"validation"`, `"test"`.

    Returns:
        `x` float32 of shape `(n, 8, 8)` in [0, 1], `y` int32 of shape `(n,)`.

    Example:

    >>> x, y = load("test")
    >>> x.shape[1:], y.dtype
    ((8, 8), dtype('int32'))
    """
    if split not in SPLITS:
        raise ValueError(f"digits: unknown split {split!r}; use one of {SPLITS}.")
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")
    y = data.target.astype("int32")
    rng = np.random.default_rng(_SEED)
    parts = {name: [] for name in SPLITS}
    for label in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_train = int(round(0.70 * len(idx)))
        n_val = int(round(0.15 * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["validation"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    idx = np.sort(np.concatenate(parts[split]))
    return x[idx], y[idx]
