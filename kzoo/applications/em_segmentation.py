"""EM-attention segmenters: EMANet-style and HEMNet, on the zoo's FCN or DeepLabV3+.

Both put an EM attention module on the features the classifier reads, as
EMANet does on its backbone: the FCN's 1/8-resolution features (after fc6),
or DeepLabV3+'s stride-4 decoder features (after the head's 3x3 convolution;
see `kzoo.applications.segmentation`):

- `EMANet`: `EMAttention`, gradients stopped through the EM iterations
  (`stop_gradient=False` gives the unrolled-EM baseline);
- `HEMNet`: `HighwayEM`, the generalized-EM highway M-step, gradients through
  every iteration.

Input `image` `(batch, H, W, 3)` in [0, 1]; output `segmentation_logits`.
"""

from kzoo.applications.segmentation import logits_segmenter
from kzoo.datasets import texture_scenes
from kzoo.layers import EMAttention
from kzoo.layers import HighwayEM
from kzoo.zoo.models import preset_builder


@preset_builder()
def EMANet(
    num_classes=texture_scenes.NUM_CLASSES,
    image_size=texture_scenes.IMAGE_SIZE,
    width=16,
    backbone="fcn",
    num_bases=16,
    iterations=3,
    stop_gradient=True,
    name="emanet",
):
    """The FCN with EMANet's EM attention module on its 1/8-resolution features.

    Args:
        num_classes: number of classes.
        image_size: input height and width.
        width: the backbone's width (see `kzoo.applications.FCN`).
        backbone: `"fcn"` or `"deeplabv3plus"` (see `kzoo.applications.FCN`).
        num_bases: EM bases K.
        iterations: EM iterations T.
        stop_gradient: EMANet's stopped gradients through the iterations;
            `False` is unrolled EM.
        weights: `None`, a preset name or a preset directory.
        name: model name.

    Example:

    >>> EMANet(num_bases=8).output_shape
    (None, 64, 64, 5)
    """
    module = EMAttention(num_bases, iterations, stop_gradient=stop_gradient, name="em_attention")
    return logits_segmenter(
        num_classes, image_size, width, name, backbone, "EMANet", context=module
    )


@preset_builder()
def HEMNet(
    num_classes=texture_scenes.NUM_CLASSES,
    image_size=texture_scenes.IMAGE_SIZE,
    width=16,
    backbone="fcn",
    num_bases=16,
    iterations=3,
    gamma=0.5,
    learnable_gamma=True,
    name="hemnet",
):
    """The FCN with HighwayEM on its 1/8-resolution features (HEMNet).

    Args:
        num_classes: number of classes.
        image_size: input height and width.
        width: the backbone's width (see `kzoo.applications.FCN`).
        backbone: `"fcn"` or `"deeplabv3plus"` (see `kzoo.applications.FCN`).
        num_bases: EM bases K.
        iterations: EM iterations T.
        gamma: M-step size (initial value if learnable).
        learnable_gamma: learn gamma.
        weights: `None`, a preset name or a preset directory.
        name: model name.

    Example:

    >>> HEMNet(num_bases=8, iterations=6).output_shape
    (None, 64, 64, 5)
    """
    module = HighwayEM(
        num_bases, iterations, gamma=gamma, learnable_gamma=learnable_gamma, name="highway_em"
    )
    return logits_segmenter(
        num_classes, image_size, width, name, backbone, "HEMNet", context=module
    )
