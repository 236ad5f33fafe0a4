"""Segmentation: the texture-scenes data set, FCN and RWN, their zoo presets and export."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kzoo import applications
from kzoo import serving
from kzoo.datasets import texture_scenes
from kzoo.zoo import models
from kzoo.zoo import presets
from kzoo.zoo.tasks import TASKS

PRETRAINED = ["fcn_texture_scenes", "rwn_texture_scenes"]


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
    key = "mean_iou" if name.startswith("fcn") else "segmentation_logits_mean_iou"
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
