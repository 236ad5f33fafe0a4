"""The datasets built from what scikit-learn, scikit-image and Python ship."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from kzoo.datasets import digits
from kzoo.datasets import stdlib_text
from kzoo.datasets import texture_patches


def test_digits_splits_are_disjoint_stratified_and_complete():
    data = load_digits()

    def key(image, label):
        return (image.astype("float32") / 16.0).tobytes() + bytes([label])

    everything = {key(i, t) for i, t in zip(data.images, data.target)}
    union, total = set(), 0
    for split in digits.SPLITS:
        x, y = digits.load(split)
        assert x.shape[1:] == (8, 8) and x.dtype == np.float32 and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0
        # Each example is one image, row t as time step t; classes are balanced.
        union |= {(img.tobytes() + bytes([int(lab)])) for img, lab in zip(x, y)}
        assert np.bincount(y, minlength=10).min() >= 0.9 * len(y) / 10
        total += len(y)
    assert [len(digits.load(s)[1]) for s in digits.SPLITS] == [1258, 269, 270]
    assert total == len(data.target) and union == everything
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        digits.load("dev")


def test_stdlib_text_splits_are_disjoint_by_module():
    files = {s: {p.name for p in stdlib_text.source_files(s)} for s in stdlib_text.SPLITS}
    assert files["train"] and files["validation"] and files["test"]
    assert not (
        files["train"] & files["validation"]
        or files["train"] & files["test"]
        or files["validation"] & files["test"]
    )
    total = sum(len(f) for f in files.values())
    assert 0.7 < len(files["train"]) / total < 0.9
    assert "os.py" in set().union(*files.values())


def test_stdlib_text_windows_predict_the_next_character():
    x, y = stdlib_text.load("validation", sequence_length=32, max_chars=20_000)
    assert x.shape == y.shape and x.shape[1] == 32 and x.dtype == np.int32
    assert len(x) == 20_000 // 33
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # Consecutive, non-overlapping windows of the split's concatenated files.
    text = "\n".join(
        p.read_text(encoding="utf-8", errors="replace")
        for p in stdlib_text.source_files("validation")
    )
    windows = np.concatenate([x, y[:, -1:]], axis=1).ravel()
    np.testing.assert_array_equal(windows, stdlib_text.encode(text[: windows.size]))
    assert x.max() < stdlib_text.VOCAB_SIZE and x.min() >= 2


def test_stdlib_text_encoding_round_trip_and_unknown_characters():
    text = "def f(x):\n\treturn x ~ 1\n"
    np.testing.assert_array_equal(
        stdlib_text.encode(text), stdlib_text.encode(stdlib_text.decode(stdlib_text.encode(text)))
    )
    assert stdlib_text.decode(stdlib_text.encode(text)) == text
    assert stdlib_text.encode("é")[0] == stdlib_text.OOV_ID
    assert stdlib_text.VOCAB_SIZE == 99


def test_texture_patch_splits_use_disjoint_tiles_and_are_balanced():
    for label, name in enumerate(texture_patches.CLASSES):
        shape = texture_patches._source(name).shape
        tiles = texture_patches.split_tiles(shape, label)
        sets = [set(t) for t in tiles.values()]
        assert all(sets) and sum(map(len, sets)) == len(set.union(*sets))
    x, y = texture_patches.load("test")
    assert x.shape == (900, 32, 32, 1) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [150] * texture_patches.NUM_CLASSES
    # Standardized per patch: the mean and contrast carry no class information.
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    again, _ = texture_patches.load("test")
    np.testing.assert_array_equal(x, again)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        texture_patches.load("dev")


def test_a_corrupt_tfds_cache_names_the_directory_and_the_rebuild(tmp_path):
    from kzoo.datasets import texture_scenes

    version = texture_scenes.KzooTextureScenes(data_dir=str(tmp_path / "probe")).version
    prepared = tmp_path / texture_scenes.NAME / str(version)
    prepared.mkdir(parents=True)
    for name in ("dataset_info.json", "features.json"):
        (prepared / name).write_text("{truncated")
    with pytest.raises(texture_scenes.DatasetCacheError) as error:
        texture_scenes.load("test", directory=str(tmp_path))
    message = str(error.value)
    assert f"rm -rf {tmp_path / texture_scenes.NAME}" in message and "KZOO_DATA_DIR" in message
    assert isinstance(error.value, OSError)  # the CLI reports it as one line


def test_numpy_datasets_load_without_tensorflow_on_other_backends():
    """Only the TFDS builder needs TensorFlow: on JAX, `kzoo.layers`,
    `kzoo.optimizers` and the NumPy datasets must not import it (a GPU
    machine with JAX or PyTorch alone can then run them)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from kzoo.datasets import digits, stdlib_text, texture_patches\n"
        "import kzoo.layers, kzoo.optimizers\n"
        "assert digits.load('train')[0].shape[1:] == (8, 8)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:3])\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
