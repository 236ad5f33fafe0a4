"""Segmentation: the texture-scenes data set, FCN and RWN, their zoo presets and export."""

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kzoo import applications
from kzoo import serving
from kzoo.compat import ObjectSharingScope
from kzoo.datasets import texture_scenes
from kzoo.zoo import models
from kzoo.zoo import presets
from kzoo.zoo.tasks import TASKS

PRETRAINED = [
    "fcn_texture_scenes",
    "rwn_texture_scenes",
    "deeplabv3plus_texture_scenes",
    "rwn_deeplabv3plus_texture_scenes",
]


@pytest.fixture(scope="module")
def test_split():
    return texture_scenes.load("test")


def test_scenes_are_deterministic_real_images_with_every_class(test_split):
    sources = texture_scenes._sources()
    a = texture_scenes.compose_scene(np.random.default_rng([2, 7]), sources)
    b = texture_scenes.compose_scene(np.random.default_rng([2, 7]), sources)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    images, labels = test_split
    assert images.shape == (150, 64, 64, 3) and images.dtype == np.float32
    assert labels.shape == (150, 64, 64) and set(np.unique(labels)) == set(range(5))
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert images.std() > 0.1  # photographs, not flat fills
    train_images, _ = texture_scenes.load("train")
    assert len(train_images) == 1000
    # Disjoint splits: no test scene is a training scene.
    train_keys = {img.tobytes() for img in (train_images * 255).round().astype("uint8")}
    assert not any(img.tobytes() in train_keys for img in (images * 255).round().astype("uint8"))


@pytest.mark.multibackend
def test_keras_cv_augmentation_moves_masks_exactly_with_their_images():
    """Label pixels stay on their object: each image's first channel encodes
    its label, so after flips and shifts `image * 4 == mask` must still hold."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(24, 64, 64)).astype("int32")
    images = np.repeat(labels[..., None] / 4.0, 3, axis=-1).astype("float32")
    batches = list(texture_scenes.augmented_batches(images, labels, batch_size=8, seed=3))
    new_images = np.concatenate([np.asarray(x) for x, _ in batches])
    new_labels = np.concatenate([np.asarray(y) for _, y in batches])
    assert new_labels.dtype == np.int32 and new_labels.shape == labels.shape
    np.testing.assert_array_equal(new_images[..., 0] * 4, new_labels)
    # Every output is a flipped and/or shifted input, and not all are unchanged.
    originals = {lab.tobytes(): k for k, lab in enumerate(labels)}
    assert not any(lab.tobytes() in originals for lab in new_labels)
    # The same seed gives the same batches (shuffling and augmentation).
    again = list(texture_scenes.augmented_batches(images, labels, batch_size=8, seed=3))
    np.testing.assert_array_equal(np.asarray(again[0][1]), np.asarray(batches[0][1]))


@pytest.mark.multibackend
def test_an_rwn_fits_on_the_augmented_pipeline(test_split):
    """The task's tf.data + keras-cv batches feed `fit` on every backend,
    with the label map fanned out to both RWN outputs."""
    x, y = test_split
    model = applications.RWN(width=4)
    task = TASKS["texture_scenes"]
    task.compile(model, "sgd")
    batches = task.augment(x[:8], y[:8], batch_size=4, seed=0)
    history = model.fit(batches.map(lambda i, m: (i, task.targets(model, m))), verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_tfds_segmentation_loader_on_mocked_pets():
    with tfds.testing.mock_data(num_examples=3):
        images, labels = texture_scenes.load_tfds_segmentation(
            "oxford_iiit_pet", "train", image_size=32
        )
    assert images.shape == (3, 32, 32, 3) and labels.shape == (3, 32, 32)
    assert set(np.unique(labels)) <= {0, 1, 255}
    with tfds.testing.mock_data(num_examples=1):
        with pytest.raises(ValueError, match="no 'segmentation' feature"):
            texture_scenes.load_tfds_segmentation(
                "oxford_iiit_pet", "train", mask_key="segmentation"
            )


@pytest.mark.multibackend
def test_rwn_walk_is_switchable_without_changing_weights():
    train = applications.RWN(walk_mode="step", walk_radius=5, width=4)
    infer = applications.RWN(walk_mode="converged", walk_radius=1, width=4)
    assert train.count_params() == infer.count_params()
    assert train.get_layer("affinities").count_params() == 3 + 2 * 4
    infer.set_weights(train.get_weights())
    assert train.get_layer("affinities").output.shape == (None, 64, 64, 81)
    assert infer.get_layer("affinities").output.shape == (None, 64, 64, 5)
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype("float32")
    logits = infer.predict(x, verbose=0)["segmentation_logits"]
    assert logits.shape == (2, 64, 64, 5) and np.isfinite(logits).all()


@pytest.mark.multibackend
@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_segmenters_reproduce_recorded_metrics(name, test_split):
    model = applications.get(name, weights="pretrained")
    results = models.score(model, "texture_scenes", verbose=0)
    recorded = presets.read_metadata(name)[1]["metrics"]["test"]
    key = "segmentation_logits_mean_iou" if name.startswith("rwn") else "mean_iou"
    np.testing.assert_allclose(results[key], recorded[key], rtol=1e-3)
    assert results[key] > 0.5


def test_rwn_preset_loads_with_another_walk_but_not_other_weights():
    model = applications.RWN(walk_mode="converged", walk_radius=1, weights="rwn_texture_scenes")
    assert model.get_layer("affinities").radius == 1
    with pytest.raises(applications.PresetError, match="width"):
        applications.RWN(width=8, weights="rwn_texture_scenes")


@pytest.mark.parametrize("implementation", ["stencil", "sparse"])
def test_rwn_exports_and_verifies_in_a_tensorflow_only_process(
    tmp_path, implementation, test_split
):
    model = applications.RWN(
        walk_implementation=implementation, weights="rwn_texture_scenes", name="rwn_texture_scenes"
    )
    path = serving.export(model, tmp_path, sample_inputs={"image": test_split[0][:2]})
    report = serving.verify(path, model=model)
    assert report.ok, report
    assert report.inputs == {"image": ["float32", [None, 64, 64, 3]]}
    assert set(report.outputs) == {"segmentation_logits", "affinities"}
    assert max(report.max_abs_diff.values()) < 1e-3


def _deserialized(model):
    """`model` rebuilt from its JSON config in safe mode (as presets and
    `.keras` files are), with its weights."""
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    with ObjectSharingScope():
        clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    clone.set_weights(model.get_weights())
    return clone


@pytest.mark.multibackend
@pytest.mark.parametrize(
    "builder", [applications.FCN, applications.RWN, applications.EMANet, applications.HEMNet]
)
def test_deeplabv3plus_backbone_builds_fits_and_survives_serialization(builder):
    """keras-cv's DeepLabV3+ on a config-built ResNetV2 under each segmenter:
    logits at full resolution, one fit step, and a safe-mode config round trip
    that keeps its name (the transfer of weights by name needs it), its frozen
    final batch norm and its outputs."""
    model = builder(backbone="deeplabv3plus", width=4, num_classes=3)
    deeplab = model.get_layer("deeplabv3plus")
    assert type(deeplab).__mro__[1].__module__.startswith("keras_cv")
    assert not deeplab.backbone.get_layer("post_bn").trainable
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 3, size=(2, 64, 64)).astype("int32")
    task = TASKS["texture_scenes"]
    task.compile(model, "sgd")
    history = model.fit(x, task.targets(model, y), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    clone = _deserialized(model)
    assert clone.get_layer("deeplabv3plus").name == "deeplabv3plus"
    assert len(clone.trainable_weights) == len(model.trainable_weights)
    out, again = model.predict(x, verbose=0), clone.predict(x, verbose=0)
    out, again = (o if isinstance(o, dict) else {"logits": o} for o in (out, again))
    assert out["segmentation_logits" if builder is applications.RWN else "logits"].shape == (
        2,
        64,
        64,
        3,
    )
    for key in out:
        np.testing.assert_allclose(again[key], out[key], atol=1e-5)


def test_deeplabv3plus_rwn_has_its_own_full_resolution_affinity_features():
    model = applications.RWN(backbone="deeplabv3plus", width=4)
    assert model.get_layer("affinities").count_params() == 3 + 2 * 4
    assert model.get_layer("affinity_conv2").output.shape == (None, 64, 64, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"backbone": "vgg16"},
            r"FCN: backbone must be one of 'fcn', 'deeplabv3plus'; got 'vgg16'",
        ),
        (
            {"backbone": "deeplabv3plus", "image_size": 48},
            r"FCN: with backbone='deeplabv3plus', image_size must be an int multiple of 32; got 48",
        ),
        (
            {"backbone": "deeplabv3plus", "image_size": None},
            r"image_size must be an int multiple of 32; got None",
        ),
        ({"image_size": 60}, r"image_size must be None or an int multiple of 8; got 60"),
    ],
)
def test_bad_backbone_arguments_name_the_builder(kwargs, match):
    with pytest.raises(ValueError, match=match):
        applications.FCN(**kwargs)


def test_presets_load_only_into_their_backbone(tmp_path):
    with pytest.raises(applications.PresetError, match="backbone: preset 'fcn' vs requested"):
        applications.FCN(backbone="deeplabv3plus", weights="fcn_texture_scenes")
    # A preset saved before `backbone` existed records no backbone: it counts
    # as the default, the FCN, and still refuses the DeepLabV3+.
    old = tmp_path / "old_fcn"
    shutil.copytree(presets.resolve("fcn_texture_scenes"), old)
    metadata = json.loads((old / "metadata.json").read_text())
    del metadata["builder_args"]["backbone"]
    (old / "metadata.json").write_text(json.dumps(metadata))
    assert applications.FCN(weights=str(old)).count_params() == 155957
    with pytest.raises(applications.PresetError, match="backbone: preset 'fcn'"):
        applications.FCN(backbone="deeplabv3plus", weights=str(old))
