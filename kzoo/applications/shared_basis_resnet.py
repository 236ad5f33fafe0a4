"""SharedBasisResNet: a small ResNet whose stages share one filter basis each.

A stem 3×3 convolution, then one stage per entry of `widths`, each of
`blocks_per_stage` basic residual blocks (two 3×3 convolutions, batch norm,
ReLU, identity shortcut). A stage after the first halves the resolution in its
first block with a stride-2 convolution (and a 1×1 projection shortcut); that
convolution changes the channel count, so it stays a plain `Conv2D`. Every
other 3×3 convolution of the stage maps `width → width` channels and, with
`shared=True`, is a `SharedBasisConv2D` over the stage's one `FilterBasis`
(`basis_size` filters, `OrthogonalBasis(orthogonality)` regularized); with
`shared=False` it is a plain `Conv2D` — the unshared twin.

Input `patch` `(batch, 32, 32, 1)`; output `class_probabilities`.
"""

import keras

from kzoo.datasets import texture_patches
from kzoo.layers import FilterBasis
from kzoo.layers import OrthogonalBasis
from kzoo.layers import SharedBasisConv2D
from kzoo.zoo.models import preset_builder

_BN_MOMENTUM = 0.9  # as in DeepO2P: the default 0.99 lags on this small set


def _bn_relu(x, name, relu=True):
    x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _conv(x, width, name, basis=None, num_unique=0, strides=1):
    if basis is None:
        return keras.layers.Conv2D(
            width,
            3,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=name,
        )(x)
    return SharedBasisConv2D(width, basis, num_unique=num_unique, name=name)(x)


def _block(x, width, name, basis, num_unique, downsample):
    shortcut = x
    strides = 2 if downsample else 1
    first_basis = None if downsample else basis
    h = _bn_relu(_conv(x, width, f"{name}_conv1", first_basis, num_unique, strides), f"{name}_1")
    h = _bn_relu(_conv(h, width, f"{name}_conv2", basis, num_unique), f"{name}_2", relu=False)
    if downsample:
        shortcut = keras.layers.Conv2D(
            width, 1, strides=2, use_bias=False, name=f"{name}_shortcut"
        )(x)
        shortcut = keras.layers.BatchNormalization(
            momentum=_BN_MOMENTUM, name=f"{name}_shortcut_bn"
        )(shortcut)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, h])
    return keras.layers.ReLU(name=f"{name}_out")(x)


@preset_builder()
def SharedBasisResNet(
    shared=True,
    widths=(16, 32, 64),
    blocks_per_stage=2,
    basis_size=None,
    num_unique=0,
    orthogonality=10.0,
    num_classes=texture_patches.NUM_CLASSES,
    patch_size=texture_patches.PATCH_SIZE,
    name="shared_basis_resnet",
):
    """A small ResNet with one shared filter basis per stage (or its unshared twin).

    Args:
        shared: share a `FilterBasis` across each stage's `width → width`
            convolutions; `False` builds the same network with plain `Conv2D`.
        widths: channels of the stages.
        blocks_per_stage: residual blocks per stage.
        basis_size: basis filters per stage (default: the stage's width).
        num_unique: unique filters of each shared convolution.
        orthogonality: λ of `OrthogonalBasis` (0 disables it).
        num_classes: number of classes.
        patch_size: input height and width.
        weights: `None`, a preset name or a preset directory.
        name: model name.

    Example:

    >>> shared = SharedBasisResNet()
    >>> unshared = SharedBasisResNet(shared=False)
    >>> shared.count_params() < unshared.count_params()
    True
    """
    if blocks_per_stage < 1 or not widths:
        raise ValueError(
            "SharedBasisResNet needs at least one stage and one block per stage; "
            f"got widths={widths}, blocks_per_stage={blocks_per_stage}."
        )
    inputs = keras.Input((patch_size, patch_size, 1), name="patch")
    x = _bn_relu(_conv(inputs, widths[0], "stem_conv"), "stem")
    for stage, width in enumerate(widths):
        basis = None
        if shared:
            regularizer = OrthogonalBasis(orthogonality) if orthogonality else None
            basis = FilterBasis(
                basis_size or width, kernel_regularizer=regularizer, name=f"stage{stage}_basis"
            )
        for block in range(blocks_per_stage):
            x = _block(
                x,
                width,
                f"stage{stage}_block{block}",
                basis,
                num_unique,
                downsample=stage > 0 and block == 0,
            )
    x = keras.layers.GlobalAveragePooling2D(name="average_pooling")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="class_probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=name)
