"""DeepO2P and its first-order twin: zoo presets, training, TF Serving export."""

import numpy as np
import pytest

from kzoo import applications
from kzoo.datasets import texture_patches
from kzoo.zoo.tasks import TASKS
from tests import helpers

PRETRAINED = ["deep_o2p_texture_patches", "first_order_texture_patches"]


@pytest.mark.multibackend
@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_reproduce_recorded_test_metrics(name):
    helpers.assert_texture_patch_preset_reproduces(name)


@pytest.mark.multibackend
def test_o2p_trains_with_finite_gradients_on_real_patches():
    x, y = texture_patches.load("validation")
    model = applications.DeepO2P(filters=(8, 8), projection=8)
    TASKS["texture_patches"].compile(model, "adam")
    history = model.fit(x[:128], y[:128], batch_size=32, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    for weight in model.trainable_weights:
        assert np.all(np.isfinite(np.asarray(weight)))


def test_builder_checks_its_head():
    with pytest.raises(ValueError, match="head must be one of"):
        applications.DeepO2P(head="third_order")
    assert applications.DeepO2P(head="first_order").get_layer("average_pooling")


def test_o2p_exports_and_verifies_in_a_tensorflow_only_process(tmp_path):
    helpers.assert_texture_patch_preset_serves("deep_o2p_texture_patches", tmp_path)
