"""Texture scenes: a real-image segmentation dataset composed locally.

No segmentation data set can be downloaded here, so this TFDS builder composes
scenes from the photographs and textures scikit-image ships: a background
cropped from a colour photograph (astronaut, coffee, cat, rocket, Hubble deep
field, immunohistochemistry, retina), and one to three objects pasted on it,
each a random ellipse or polygon filled with a tinted crop of a texture
(brick, grass, gravel), or the horse silhouette filled with a crop of the
coins photograph. The label of a pixel is the class of the topmost object
covering it (0 where none does). Scenes are deterministic given the split and
index, so the data set is the same on every machine.

Classes: 0 background, 1 brick, 2 grass, 3 gravel, 4 horse.

Also: `load_tfds_segmentation` for real TFDS segmentation sets a user may have
prepared locally (e.g. `oxford_iiit_pet`).
"""

import os
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from google.protobuf.json_format import ParseError
from google.protobuf.message import DecodeError

NAME = "kzoo_texture_scenes"
CLASSES = ("background", "brick", "grass", "gravel", "horse")
NUM_CLASSES = len(CLASSES)
IMAGE_SIZE = 64
SPLITS = {"train": 1000, "validation": 150, "test": 150}
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
_BACKGROUNDS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
_TEXTURES = ("brick", "grass", "gravel")


def _sources():
    from skimage import data
    from skimage import transform

    def small(image, size):
        scale = size / min(image.shape[:2])
        shape = (int(image.shape[0] * scale), int(image.shape[1] * scale))
        return transform.resize(image, shape, anti_aliasing=True).astype("float32")

    return {
        "backgrounds": [small(getattr(data, n)(), 160) for n in _BACKGROUNDS],
        "textures": [small(getattr(data, n)(), 192) for n in _TEXTURES],
        "horse": ~data.horse(),  # True on the horse
        "coins": small(data.coins(), 160),
    }


def _crop(rng, image, size):
    y = rng.integers(0, image.shape[0] - size + 1)
    x = rng.integers(0, image.shape[1] - size + 1)
    return image[y : y + size, x : x + size]


def _shape_mask(rng, size):
    from skimage import draw

    mask = np.zeros((size, size), bool)
    cy, cx = rng.uniform(0.2, 0.8, size=2) * size
    if rng.uniform() < 0.5:
        ry, rx = rng.uniform(0.12, 0.32, size=2) * size
        rr, cc = draw.ellipse(cy, cx, ry, rx, shape=mask.shape, rotation=rng.uniform(0, np.pi))
    else:
        n = rng.integers(3, 7)
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = rng.uniform(0.12, 0.35, size=n) * size
        rr, cc = draw.polygon(
            cy + radii * np.sin(angles), cx + radii * np.cos(angles), shape=mask.shape
        )
    mask[rr, cc] = True
    return mask


def _horse_mask(rng, size, horse):
    from skimage import transform

    height = int(rng.uniform(0.4, 0.8) * size)
    width = int(height * horse.shape[1] / horse.shape[0])
    shape = transform.resize(horse.astype("float32"), (height, width), order=0) > 0.5
    if rng.uniform() < 0.5:
        shape = shape[:, ::-1]
    mask = np.zeros((size, size), bool)
    y = rng.integers(-height // 4, size - 3 * height // 4)
    x = rng.integers(-width // 4, size - 3 * width // 4)
    ys, xs = slice(max(y, 0), min(y + height, size)), slice(max(x, 0), min(x + width, size))
    mask[ys, xs] = shape[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
    return mask


def compose_scene(rng, sources, size=IMAGE_SIZE):
    """One scene: `(image uint8 (size, size, 3), labels uint8 (size, size))`."""
    background = sources["backgrounds"][rng.integers(len(sources["backgrounds"]))]
    image = _crop(rng, background, size).copy()
    labels = np.zeros((size, size), "uint8")
    for _ in range(rng.integers(1, 4)):
        label = int(rng.integers(1, NUM_CLASSES))
        if label == CLASSES.index("horse"):
            mask = _horse_mask(rng, size, sources["horse"])
            fill = _crop(rng, sources["coins"], size)[..., None] * rng.uniform(0.6, 1.0, size=3)
        else:
            mask = _shape_mask(rng, size)
            texture = _crop(rng, sources["textures"][label - 1], size)
            tint = rng.uniform(0.5, 1.0, size=3)
            fill = texture[..., None] * tint + rng.uniform(0, 0.2)
        image[mask] = np.clip(fill[mask], 0, 1)
        labels[mask] = label
    return (image * 255).round().astype("uint8"), labels


class KzooTextureScenes(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of the texture-scenes segmentation set (generated locally)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "64x64 scenes, 5 classes, 1000/150/150."}

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "segmentation_mask": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
                }
            ),
            supervised_keys=("image", "segmentation_mask"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        sources = _sources()
        for index in range(SPLITS[split]):
            rng = np.random.default_rng([_SPLIT_SEEDS[split], index])
            image, labels = compose_scene(rng, sources)
            yield index, {"image": image, "segmentation_mask": labels[..., None]}


def data_dir():
    """Where the prepared data set lives: `$KZOO_DATA_DIR` or TFDS' default."""
    return os.environ.get("KZOO_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def load(split, directory=None):
    """Returns `(images, labels)` for one split, preparing the data set once.

    Args:
        split: `"train"`, `"validation"` or `"test"`.
        directory: TFDS data directory (default: `data_dir()`).

    Returns:
        `images` float32 `(n, 64, 64, 3)` in [0, 1] and `labels` int32
        `(n, 64, 64)`.
    """
    if split not in SPLITS:
        raise ValueError(f"{NAME}: unknown split {split!r}; use one of {tuple(SPLITS)}.")
    directory = directory or data_dir()
    try:
        builder = KzooTextureScenes(data_dir=directory)
        builder.download_and_prepare()
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    except (tf.errors.OpError, DecodeError, ParseError, OSError, ValueError, KeyError) as e:
        cache = Path(directory) / NAME
        raise DatasetCacheError(
            f"{NAME}: the prepared data set in {cache} is unreadable "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}). Rebuild it: "
            f"rm -rf {cache} and run the command again (it is regenerated locally, "
            "in about a minute), or set KZOO_DATA_DIR to another directory."
        ) from e
    return (
        data["image"].astype("float32") / 255.0,
        data["segmentation_mask"][..., 0].astype("int32"),
    )


class DatasetCacheError(OSError):
    """A locally prepared TFDS data set is corrupt; the message says how to rebuild it."""


def load_tfds_segmentation(
    name, split, image_size=IMAGE_SIZE, directory=None, mask_key="segmentation_mask"
):
    """Loads a real TFDS segmentation set the user has prepared locally.

    `oxford_iiit_pet` trimaps (1 pet, 2 background, 3 border) become labels
    1 pet, 0 background, 255 ignore; other builders' masks are used as they
    are. (TFDS's `voc` builder carries detection boxes only, no masks, so it is
    not a segmentation source.) Nothing is downloaded: prepare the data set
    with TFDS first.

    Args:
        name: a TFDS name, e.g. `"oxford_iiit_pet"`.
        split: a TFDS split string.
        image_size: images are resized to this square size (masks by nearest
            neighbour).
        directory: TFDS data directory.
        mask_key: the feature holding the label mask.

    Returns:
        `(images, labels)` as in `load`.
    """
    import tensorflow as tf

    dataset = tfds.load(name, split=split, data_dir=directory, download=False)
    if mask_key not in dataset.element_spec:
        raise ValueError(
            f"load_tfds_segmentation: {name!r} has no {mask_key!r} feature; "
            f"its features are {sorted(dataset.element_spec)}."
        )
    images, labels = [], []
    for example in tfds.as_numpy(dataset):
        image = tf.image.resize(example["image"], (image_size, image_size)).numpy() / 255.0
        mask = example[mask_key]
        mask = mask if mask.ndim == 3 else mask[..., None]
        mask = tf.image.resize(mask, (image_size, image_size), method="nearest").numpy()[..., 0]
        if name.startswith("oxford_iiit_pet"):
            mask = np.select([mask == 1, mask == 2], [1, 0], 255)
        images.append(image.astype("float32"))
        labels.append(mask.astype("int32"))
    return np.stack(images), np.stack(labels)


def augmentation(max_shift=8, seed=None):
    """keras-cv's random horizontal flip and translation, for images and masks alike.

    The returned callable takes `{"images": (n, H, W, 3), "segmentation_masks":
    (n, H, W, 1)}` and transforms both with the same random flip and shift
    per example. Shifts move whole pixels (nearest interpolation) and fill
    with black in the image and background (0) in the mask. It runs inside
    `tf.data` on every Keras backend (see `augmented_batches`).

    Args:
        max_shift: the largest shift in pixels, per axis.
        seed: the random seed.
    """
    import keras_cv

    factor = max_shift / IMAGE_SIZE
    return keras_cv.layers.Augmenter(
        [
            keras_cv.layers.RandomFlip("horizontal", seed=seed),
            keras_cv.layers.RandomTranslation(
                factor,
                factor,
                fill_mode="constant",
                fill_value=0.0,
                interpolation="nearest",
                seed=None if seed is None else seed + 1,
            ),
        ]
    )


def augmented_batches(images, labels, batch_size, seed=0, max_shift=8):
    """Shuffled, augmented training batches as a `tf.data.Dataset`.

    Each epoch reshuffles the scenes and draws new flips and shifts
    (`augmentation`), applied to images and masks together inside the
    `tf.data` pipeline, so `fit` on TensorFlow, JAX and PyTorch sees the same
    batches.

    Args:
        images: `(n, H, W, 3)` float array.
        labels: `(n, H, W)` int array.
        batch_size: batch size.
        seed: seed of the shuffling and of the augmentation.
        max_shift: the largest shift in pixels, per axis.

    Returns:
        A dataset of `(images, labels)` batches, `labels` int32 `(b, H, W)`.

    Example:

    >>> x, y = load("validation")
    >>> images, masks = next(iter(augmented_batches(x[:8], y[:8], batch_size=4)))
    >>> tuple(images.shape), tuple(masks.shape)
    ((4, 64, 64, 3), (4, 64, 64))
    """
    augment = augmentation(max_shift, seed)

    def transform(x, y):
        out = augment({"images": x, "segmentation_masks": y[..., None]})
        return out["images"], tf.cast(out["segmentation_masks"][..., 0], "int32")

    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(transform)  # sequential: the random draws happen in batch order
        .prefetch(tf.data.AUTOTUNE)
    )
