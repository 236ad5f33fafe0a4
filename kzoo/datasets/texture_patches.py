"""Texture patches: a texture classification set from scikit-image's images.

Six grayscale sources scikit-image ships — brick, grass, gravel, the moon's
surface, a microscopy cell image and an immunohistochemistry stain — are
rescaled to 384 rows and cut into 48×48 tiles; each image's tiles are dealt
at random (fixed seed) to training (60%), validation (20%) and test (20%), so
no test pixel was seen in training (each class has one source image: the
held-out tiles play held-out images, the protocol of Brodatz/Outex texture
benchmarks). Patches are 32×32, randomly placed in a tile of their split,
flipped and rotated by multiples of 90°, and standardized to zero mean and
unit variance each: the mean brightness and contrast of a class carry no
information, what is left is texture, i.e. second-order structure.

Everything is deterministic given the split, so the set is the same on every
machine; nothing is downloaded.
"""

import numpy as np

NAME = "kzoo_texture_patches"
CLASSES = ("brick", "grass", "gravel", "moon", "cell", "immunohistochemistry")
NUM_CLASSES = len(CLASSES)
PATCH_SIZE = 32
SPLITS = {"train": 600, "validation": 100, "test": 150}  # patches per class
_FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
_ROWS = 384
_TILE = 48


def _source(name):
    from skimage import color
    from skimage import data
    from skimage import transform

    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image)
    image = image.astype("float64") / (255.0 if image.max() > 1 else 1.0)
    scale = _ROWS / image.shape[0]
    shape = (_ROWS, int(round(image.shape[1] * scale)))
    return transform.resize(image, shape, anti_aliasing=True)


def split_tiles(shape, label):
    """The top-left corners of the tiles of each split, for one class's image."""
    corners = [
        (y, x)
        for y in range(0, shape[0] - _TILE + 1, _TILE)
        for x in range(0, shape[1] - _TILE + 1, _TILE)
    ]
    order = np.random.default_rng([99, label]).permutation(len(corners))
    n_train = int(round(_FRACTIONS["train"] * len(corners)))
    n_val = int(round(_FRACTIONS["validation"] * len(corners)))
    parts = np.split(order, [n_train, n_train + n_val])
    return {split: [corners[i] for i in part] for split, part in zip(SPLITS, parts)}


def load(split):
    """Returns `(patches, labels)` for one split.

    Args:
        split: `"train"`, `"validation"` or `"test"`.

    Returns:
        `patches` float32 `(n, 32, 32, 1)`, standardized per patch, and
        `labels` int32 `(n,)`, class indices into `CLASSES`.

    Example:

    >>> x, y = load("validation")
    >>> x.shape, y.shape
    ((600, 32, 32, 1), (600,))
    """
    if split not in SPLITS:
        raise ValueError(f"{NAME}: unknown split {split!r}; use one of {tuple(SPLITS)}.")
    patches, labels = [], []
    for label, name in enumerate(CLASSES):
        image = _source(name)
        tiles = split_tiles(image.shape, label)[split]
        rng = np.random.default_rng([_SPLIT_SEEDS[split], label])
        for _ in range(SPLITS[split]):
            top, left = tiles[rng.integers(len(tiles))]
            y = top + rng.integers(0, _TILE - PATCH_SIZE + 1)
            x = left + rng.integers(0, _TILE - PATCH_SIZE + 1)
            patch = np.rot90(image[y : y + PATCH_SIZE, x : x + PATCH_SIZE], rng.integers(4))
            if rng.uniform() < 0.5:
                patch = patch[:, ::-1]
            patches.append((patch - patch.mean()) / (patch.std() + 1e-6))
            labels.append(label)
    order = np.random.default_rng(_SPLIT_SEEDS[split]).permutation(len(labels))
    return (
        np.stack(patches)[order, ..., None].astype("float32"),
        np.asarray(labels, "int32")[order],
    )
