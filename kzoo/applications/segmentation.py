"""Semantic segmentation models: FCN and DeepLabV3+ segmenters, Random Walk Networks.

Every segmenter here (and in `em_segmentation`) sits on one of two
`backbone`s:

- `"fcn"`: a small DeepLab-LargeFOV-style fully convolutional network
  (output stride 8, dilated convolutions at 1/8 resolution, class scores
  bilinearly upsampled to the input resolution, as DeepLab upsamples fc8).
- `"deeplabv3plus"`: keras-cv's `DeepLabV3Plus` on a keras-cv
  `ResNetV2Backbone` built from its configuration (bottleneck stacks of
  `width`, `2 width`, `3 width`, `4 width` filters, two blocks each; no
  downloaded weights). Its encoder (ASPP) sees the stride-32 features, its
  decoder joins them with the stride-4 ones; the segmentation head is ours
  (it outputs logits, and it is where a `context` module goes).

- `FCN`: the segmenter alone (`FCN(backbone="deeplabv3plus")` is the plain
  DeepLabV3+).
- `RWN`: the segmenter plus the affinity branch (`PixelAffinity` on
  full-resolution features: the RGB image and the FCN's two full-resolution
  conv layers, or, on DeepLabV3+, whose ResNet has no full-resolution layer,
  two full-resolution conv layers of its own) and a `RandomWalk` on the
  upsampled class scores (Bertasius et al., 2016). The walk is switchable by
  builder arguments that do not change the weights (the paper: one step with
  a large radius to train, the converged walk with a small radius to test).

All output `segmentation_logits` `(batch, H, W, num_classes)` (train with
`from_logits=True`; the argmax is the segmentation); the RWN also outputs the
`affinities` its walk used, for the affinity loss.
"""

import keras
import keras_cv

from kzoo.datasets import texture_scenes
from kzoo.layers import PixelAffinity
from kzoo.layers import RandomWalk
from kzoo.zoo.models import preset_builder

# Builder arguments that select the walk, not the weights: an RWN preset loads
# into a model built with any of them.
WALK_ARGS = ("walk_mode", "walk_radius", "alpha", "walk_steps", "walk_implementation")

# DeepLabV3+ sizes for 64-pixel scenes on 2 cores: the stride-32 map is 2x2,
# which a 3x3 convolution at any dilation covers, so the ASPP has one atrous
# rate (the paper's 6, 12, 18 are for 33x33 maps); narrow ASPP, projection and
# head (the paper: 256, 48, 256).
DEEPLAB_ASPP_RATES = (1,)
DEEPLAB_ASPP_CHANNELS = 64
DEEPLAB_PROJECTION_FILTERS = 32
DEEPLAB_HEAD_FILTERS = 64


@keras.saving.register_keras_serializable(package="kzoo")
class DeepLabV3Plus(keras_cv.models.DeepLabV3Plus):
    """keras-cv's `DeepLabV3Plus`, with two mends for keras-cv 0.9.0.

    - Its config also keeps the model's name (keras-cv's `get_config` drops
      it: reloaded from a `.keras` file or a preset's config, the model came
      back renamed, and weight transfers by layer name missed it).
    - It reads a ResNetV2 backbone's last stack (P5), not the backbone's
      final batch norm, whose weights would get no gradient (and `fit` would
      warn on every run): that batch norm is frozen, however the model is
      built.
    """

    def __init__(self, backbone, num_classes, **kwargs):
        super().__init__(backbone, num_classes, **kwargs)
        if any(layer.name == "post_bn" for layer in backbone.layers):
            backbone.get_layer("post_bn").trainable = False

    def get_config(self):
        return {**super().get_config(), "name": self.name}


def _conv(x, filters, name, dilation_rate=1):
    x = keras.layers.Conv2D(
        filters, 3, padding="same", dilation_rate=dilation_rate, use_bias=False, name=name
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _fcn(image, width, num_classes, context=None):
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


def _deeplabv3plus(image, width, num_classes, context=None):
    """Returns (None, upsampled class logits) of keras-cv's DeepLabV3+.

    `context`, a layer, is applied to the decoder's stride-4 features before
    the classifier.
    """
    size = image.shape[1]
    resnet = keras_cv.models.ResNetV2Backbone(
        stackwise_filters=[width, 2 * width, 3 * width, 4 * width],
        stackwise_blocks=[2, 2, 2, 2],
        stackwise_strides=[1, 2, 2, 2],
        include_rescaling=False,
        input_shape=(size, size, 3),
        name="resnet_v2",
    )
    head = [
        keras.layers.Conv2D(
            DEEPLAB_HEAD_FILTERS, 3, padding="same", use_bias=False, name="head_conv"
        ),
        keras.layers.BatchNormalization(name="head_bn"),
        keras.layers.ReLU(name="head_relu"),
        *([context] if context is not None else []),
        keras.layers.UpSampling2D(4, interpolation="bilinear", name="head_upsampled"),
        keras.layers.Conv2D(num_classes, 1, name="classifier"),
    ]
    deeplab = DeepLabV3Plus(
        backbone=resnet,
        num_classes=num_classes,
        projection_filters=DEEPLAB_PROJECTION_FILTERS,
        spatial_pyramid_pooling=keras_cv.layers.SpatialPyramidPooling(
            dilation_rates=list(DEEPLAB_ASPP_RATES), num_channels=DEEPLAB_ASPP_CHANNELS
        ),
        segmentation_head=keras.Sequential(head, name="segmentation_head"),
        name="deeplabv3plus",
    )
    return None, deeplab(image)


# backbone -> (builder of (early features or None, logits), output stride)
BACKBONES = {"fcn": (_fcn, 8), "deeplabv3plus": (_deeplabv3plus, 32)}


def segmenter(image, backbone, width, num_classes, builder, context=None):
    """The `backbone`'s (early features or `None`, class logits) on `image`.

    `context`, a layer, goes on the features the classifier reads (the FCN's
    1/8-resolution ones, DeepLabV3+'s stride-4 decoder features).
    """
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise ValueError(
            f"{builder}: backbone must be one of {', '.join(map(repr, BACKBONES))}; "
            f"got {backbone!r}."
        )
    build, stride = BACKBONES[backbone]
    size, any_size = image.shape[1], backbone == "fcn"  # the FCN is fully convolutional
    if (size is None and not any_size) or (size is not None and size % stride):
        need = "None or an int" if any_size else "an int"
        raise ValueError(
            f"{builder}: with backbone={backbone!r}, image_size must be {need} multiple of "
            f"{stride}; got {size}."
        )
    return build(image, width, num_classes, context=context)


def logits_segmenter(num_classes, image_size, width, name, backbone, builder, context=None):
    """The `backbone`'s segmenter with an optional `context` layer, output
    `segmentation_logits`."""
    image = keras.Input((image_size, image_size, 3), name="image")
    _, logits = segmenter(image, backbone, width, num_classes, builder, context=context)
    outputs = keras.layers.Activation("linear", dtype="float32", name="segmentation_logits")(logits)
    return keras.Model(image, outputs, name=name)


@preset_builder()
def FCN(
    num_classes=texture_scenes.NUM_CLASSES,
    image_size=texture_scenes.IMAGE_SIZE,
    width=16,
    backbone="fcn",
    name="fcn",
):
    """A segmenter: the DeepLab-style FCN, or DeepLabV3+ on a ResNet.

    Args:
        num_classes: number of classes.
        image_size: input height and width (`"fcn"`: `None` for any
            multiple of 8; `"deeplabv3plus"`: a multiple of 32).
        width: `"fcn"`: channels of the first block (doubled twice);
            `"deeplabv3plus"`: bottleneck filters of the ResNet's first stack.
        backbone: `"fcn"` or `"deeplabv3plus"` (keras-cv's `DeepLabV3Plus`;
            see the module docstring).
        weights: `None`, a preset name or a preset directory.
        name: model name (also the serving model name).

    Input `image` `(batch, H, W, 3)` float32 in [0, 1]; output
    `segmentation_logits` `(batch, H, W, num_classes)`.

    Example:

    >>> model = FCN(num_classes=5, image_size=64)
    >>> model.output_shape
    (None, 64, 64, 5)
    >>> FCN(num_classes=5, backbone="deeplabv3plus", width=8).output_shape
    (None, 64, 64, 5)
    """
    return logits_segmenter(num_classes, image_size, width, name, backbone, "FCN")


@preset_builder(free_args=WALK_ARGS)
def RWN(
    num_classes=texture_scenes.NUM_CLASSES,
    image_size=texture_scenes.IMAGE_SIZE,
    width=16,
    backbone="fcn",
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
        width: the backbone's width (see `FCN`); the affinity branch sees
            `3 + 2 * width` channels (RGB and two full-resolution conv layers)
            and has that many weights.
        backbone: `"fcn"` or `"deeplabv3plus"` (see `FCN`).
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
    early, logits = segmenter(image, backbone, width, num_classes, "RWN")
    if early is None:  # DeepLabV3+: no full-resolution layer to share
        first = _conv(image, width, "affinity_conv1")
        second = _conv(first, width, "affinity_conv2")
        early = keras.layers.Concatenate(name="affinity_features")([image, first, second])
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
