"""SharedBasisResNet and its unshared twin: zoo presets, sharing kept, TF Serving export."""

import numpy as np
import pytest

from kzoo import applications
from kzoo.datasets import texture_patches
from kzoo.layers import SharedBasisConv2D
from kzoo.zoo import presets
from tests import helpers

PRETRAINED = ["shared_basis_resnet_texture_patches", "resnet_texture_patches"]


@pytest.mark.multibackend
@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_reproduce_recorded_test_metrics(name):
    helpers.assert_texture_patch_preset_reproduces(name)


def test_preset_config_keeps_one_basis_per_stage():
    built = applications.get("shared_basis_resnet_texture_patches", weights="pretrained")
    loaded = presets.load_preset("shared_basis_resnet_texture_patches")
    convs = [layer for layer in loaded.layers if isinstance(layer, SharedBasisConv2D)]
    assert len({id(c.basis) for c in convs}) == 3
    assert loaded.count_params() == built.count_params()
    x, _ = texture_patches.load("test")
    np.testing.assert_allclose(
        loaded.predict(x[:64], verbose=0), built.predict(x[:64], verbose=0), atol=1e-6
    )
    unshared = presets.read_metadata("resnet_texture_patches")[1]["parameter_count"]
    assert built.count_params() < 0.6 * unshared


def test_shared_basis_resnet_exports_and_verifies_in_a_tensorflow_only_process(tmp_path):
    helpers.assert_texture_patch_preset_serves("shared_basis_resnet_texture_patches", tmp_path)
