"""Semantic segmentation models: a DeepLab-style FCN and Random Walk Networks.

- `FCN`: a small DeepLab-LargeFOV-style fully convolutional network (output
  stride 8, dilated convolutions at 1/8 resolution, class scores bilinearly
  upsampled to the input resolution, as DeepLab upsamples fc8).
- `RWN`: the same FCN plus the affinity branch (`PixelAffinity` on the RGB
  image and the two full-resolution conv layers) and a `RandomWalk` on the
  upsampled class scores (Bertasius et al., 2016). The walk is switchable by
  builder arguments that do not change the weights (the paper: one step with
  a large radius to train, the converged walk with a small radius to test).

Both output `segmentation_logits` `(batch, H, W, num_classes)` (train with
`from_logits=True`; the argmax is the segmentation); the RWN also outputs the
`affinities` its walk used, for the affinity loss.
"""

import keras

from kzoo.datasets import texture_scenes
from kzoo.layers import PixelAffinity
from kzoo.layers import RandomWalk
from kzoo.zoo.models import preset_builder

# Builder arguments that select the walk, not the weights: an RWN preset loads
# into a model built with any of them.
WALK_ARGS = ("walk_mode", "walk_radius", "alpha", "walk_steps", "walk_implementation")


def _conv(x, filters, name, dilation_rate=1):
    x = keras.layers.Conv2D(
        filters, 3, padding="same", dilation_rate=dilation_rate, use_bias=False, name=name
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _backbone(image, width, num_classes, context=None):
    """Returns (full-resolution early features, upsampled class logits).

    `context`, a layer, is applied to the 1/8-resolution features before the
    classifier (where EMANet puts its EM attention module).
    """
    conv1_1 = _conv(image, width, "conv1_1")
    conv1_2 = _conv(conv1_1, width, "conv1_2")
    x = keras.layers.MaxPooling2D(name="pool1")(conv1_2)
    x = _conv(_conv(x, 2 * width, "conv2_1"), 2 * width, "conv2_2")
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = _conv(_conv(x, 4 * width, "conv3_1"), 4 * width, "conv3_2")
    x = keras.layers.MaxPooling2D(name="pool3")(x)  # output stride 8
    x = _conv(x, 4 * width, "conv4_1", dilation_rate=2)
    x = _conv(x, 4 * width, "fc6", dilation_rate=4)  # large field of view
    if context is not None:
        x = context(x)
    x = keras.layers.Conv2D(8 * width, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(0.3, name="fc7_dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="fc8")(x)
    logits = keras.layers.UpSampling2D(8, interpolation="bilinear", name="fc8_upsampled")(x)
    early = keras.layers.Concatenate(name="affinity_features")([image, conv1_1, conv1_2])
    return early, logits


def logits_segmenter(num_classes, image_size, width, name, context=None):
    """The FCN with an optional `context` layer, output `segmentation_logits`."""
    image = keras.Input((image_size, image_size, 3), name="image")
    _, logits = _backbone(image, width, num_classes, context=context)
    outputs = keras.layers.Activation("linear", dtype="float32", name="segmentation_logits")(logits)
    return keras.Model(image, outputs, name=name)


@preset_builder()
def FCN(
    num_classes=texture_scenes.NUM_CLASSES,
    image_size=texture_scenes.IMAGE_SIZE,
    width=16,
    name="fcn",
):
    """DeepLab-style FCN (output stride 8, dilated convolutions).

    Args:
        num_classes: number of classes.
        image_size: input height and width (`None` for any multiple of 8).
        width: channels of the first block (doubled twice).
        weights: `None`, a preset name or a preset directory.
        name: model name (also the serving model name).

    Input `image` `(batch, H, W, 3)` float32 in [0, 1]; output
    `segmentation_logits` `(batch, H, W, num_classes)`.

    Example:

    >>> model = FCN(num_classes=5, image_size=64)
    >>> model.output_shape
    (None, 64, 64, 5)
    """
    return logits_segmenter(num_classes, image_size, width, name)


@preset_builder(free_args=WALK_ARGS)
def RWN(
    num_classes=texture_scenes.NUM_CLASSES,
    image_size=texture_scenes.IMAGE_SIZE,
    width=16,
    walk_mode="step",
    walk_radius=5,
    alpha=0.5,
    walk_steps=None,
    walk_implementation="auto",
    name="rwn",
):
    """Random Walk Network: the FCN, a pixel-affinity branch and a random walk.

    Args:
        num_classes: number of classes.
        image_size: input height and width (static: the sparse walk needs it).
        width: channels of the FCN's first block; the affinity branch sees
            `3 + 2 * width` channels (RGB, conv1_1, conv1_2) and has that many
            weights.
        walk_mode: `"step"` (training: `A^walk_steps f`) or `"converged"`
            (inference: `(1 - alpha) (I - alpha A)^-1 f`).
        walk_radius: neighbourhood radius of the affinities.
        alpha: walk weight of the converged walk.
        walk_steps: see `kzoo.layers.RandomWalk`'s `steps`.
        walk_implementation: `"auto"`, `"stencil"` or `"sparse"` (see
            `kzoo.layers.RandomWalk`).
        weights: `None`, a preset name or a preset directory; the walk
            arguments may differ from the preset's.
        name: model name (also the serving model name).

    Input `image` `(batch, H, W, 3)` float32 in [0, 1]; outputs
    `segmentation_logits` `(batch, H, W, num_classes)` and `affinities`
    `(batch, H, W, P)`.

    Example:

    >>> train = RWN(walk_mode="step", walk_radius=5)
    >>> infer = RWN(walk_mode="converged", walk_radius=2)
    >>> infer.set_weights(train.get_weights())
    """
    image = keras.Input((image_size, image_size, 3), name="image")
    early, logits = _backbone(image, width, num_classes)
    affinities = PixelAffinity(walk_radius, dtype="float32", name="affinities")(early)
    walked = RandomWalk(
        walk_mode,
        alpha=alpha,
        steps=walk_steps,
        implementation=walk_implementation,
        dtype="float32",
        name="segmentation_logits",
    )([logits, affinities])
    return keras.Model(image, {"segmentation_logits": walked, "affinities": affinities}, name=name)
