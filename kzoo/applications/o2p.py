"""DeepO2P: a CNN with a second-order pooling head, and its first-order twin.

Both share one small convolutional trunk (two 3×3 blocks of `filters[0]`,
max pooling, two of `filters[1]`, max pooling, a 1×1 projection to
`projection` channels) and differ only in how the feature map is pooled:

- `head="o2p"`: `SecondOrderPooling` → `LogEig` → `UpperTriangle`, the O2P
  descriptor of Ionescu et al. (`projection (projection + 1) / 2` numbers),
  learned end to end through the matrix-backprop gradients;
- `head="first_order"`: global average pooling (`projection` numbers).

Both then batch-normalize the pooled vector and classify it with a softmax
layer. Input `patch` `(batch, 32, 32, 1)`; output `class_probabilities`.
"""

import keras

from kzoo.datasets import texture_patches
from kzoo.layers import LogEig
from kzoo.layers import SecondOrderPooling
from kzoo.layers import UpperTriangle
from kzoo.zoo.models import preset_builder

HEADS = ("o2p", "first_order")
# Keras' default 0.99 leaves a third of the initial moving statistics after
# two epochs of this small training set; inference then scores far below
# training mode (measured: 46% vs 98% on training patches).
_BN_MOMENTUM = 0.9


def _conv_block(x, filters, name):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


@preset_builder()
def DeepO2P(
    head="o2p",
    num_classes=texture_patches.NUM_CLASSES,
    patch_size=texture_patches.PATCH_SIZE,
    filters=(32, 64),
    projection=16,
    epsilon=1e-3,
    dropout=0.3,
    name="deep_o2p",
):
    """A small CNN classifier with an O2P (or global-average) pooling head.

    Args:
        head: `"o2p"` (second-order pooling, LogEig, upper triangle) or
            `"first_order"` (global average pooling).
        num_classes: number of classes.
        patch_size: input height and width.
        filters: channels of the two convolutional stages.
        projection: channels of the 1×1 projection that is pooled.
        epsilon: ridge of the second-order pooling.
        dropout: dropout rate before the classifier.
        weights: `None`, a preset name or a preset directory.
        name: model name.

    Example:

    >>> DeepO2P(projection=8).output_shape
    (None, 6)
    """
    if head not in HEADS:
        raise ValueError(f"DeepO2P: head must be one of {HEADS}; got {head!r}.")
    inputs = keras.Input((patch_size, patch_size, 1), name="patch")
    x = inputs
    for stage, width in enumerate(filters):
        x = _conv_block(x, width, f"stage{stage}_block0")
        x = _conv_block(x, width, f"stage{stage}_block1")
        x = keras.layers.MaxPooling2D(name=f"stage{stage}_pool")(x)
    x = keras.layers.Conv2D(projection, 1, name="projection")(x)
    if head == "o2p":
        x = SecondOrderPooling(epsilon, name="second_order_pooling")(x)
        x = LogEig(name="log_eig")(x)
        x = UpperTriangle(name="upper_triangle")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="average_pooling")(x)
    x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name="pooled_bn")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="class_probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=name)
