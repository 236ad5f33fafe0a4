"""The zoo: registry, verified presets, builders with `weights=`, training."""

import json
import shutil

import keras
import numpy as np
import pytest

from kzoo import applications
from kzoo import zoo
from kzoo.zoo import models
from kzoo.zoo import presets
from kzoo.zoo.tasks import TASKS

pytestmark = pytest.mark.multibackend  # presets load, evaluate and train on every backend

PRETRAINED = [
    "deep_o2p_texture_patches",
    "deeplabv3plus_texture_scenes",
    "emanet_deeplabv3plus_texture_scenes",
    "emanet_texture_scenes",
    "fcn_texture_scenes",
    "first_order_texture_patches",
    "hemnet_deeplabv3plus_texture_scenes",
    "hemnet_texture_scenes",
    "lnlstm_char_lm",
    "lnlstm_digits",
    "lstm_char_lm",
    "lstm_digits",
    "resnet_texture_patches",
    "rwn_deeplabv3plus_texture_scenes",
    "rwn_texture_scenes",
    "shared_basis_resnet_texture_patches",
    "unrolled_em_texture_scenes",
]


@pytest.fixture
def preset_copy(tmp_path):
    """A copy of the pretrained `lnlstm_digits` preset, to damage."""
    target = tmp_path / "lnlstm_digits"
    shutil.copytree(presets.resolve("lnlstm_digits"), target)
    return target


def test_registry_lists_models_with_pretrained_presets():
    assert set(PRETRAINED) <= set(applications.list_models())
    assert set(PRETRAINED) <= set(presets.available_presets())
    valid = "Unknown name 'nope'; models: .*; learned optimizers: lstm_optimizer_digits_mlp"
    with pytest.raises(ValueError, match=valid):
        applications.get("nope")


def test_metadata_records_provenance():
    for name in PRETRAINED:
        _, metadata = presets.read_metadata(name)
        assert metadata["training_command"].endswith(
            f"kzoo train {name} --epochs {metadata['training_command'].split()[-3]} --seed 0"
        )
        assert metadata["builder"] == zoo.entry(name).load_builder().__name__
        assert metadata["builder_args"] == models.builder_args(name)
        for key in ("dataset", "keras_version", "backend", "metrics", "parameter_count"):
            assert metadata[key]


@pytest.mark.parametrize("name", ["lnlstm_digits", "lstm_digits"])
def test_pretrained_classifier_reproduces_recorded_test_metrics(name):
    model = applications.get(name, weights="pretrained")
    _, metadata = presets.read_metadata(name)
    results = models.score(model, "digits_rows", verbose=0)
    recorded = metadata["metrics"]["test"]
    np.testing.assert_allclose(results["loss"], recorded["loss"], rtol=1e-4)
    np.testing.assert_allclose(results["accuracy"], recorded["accuracy"], rtol=1e-6)
    assert results["accuracy"] > 0.9


def test_pretrained_char_lm_beats_unigram_model():
    model = applications.get("lnlstm_char_lm", weights="pretrained")
    x, y = TASKS["stdlib_chars"].load("test")
    x, y = x[:128], y[:128]
    probs = keras.ops.convert_to_numpy(model(x))
    bits = -np.log2(np.take_along_axis(probs, y[..., None], -1)).mean()
    counts = np.bincount(y.ravel(), minlength=probs.shape[-1]) + 1.0
    unigram_bits = -(counts / counts.sum() * np.log2(counts / counts.sum())).sum()
    assert bits < 0.6 * unigram_bits, (bits, unigram_bits)


def test_builders_take_weights_like_keras_applications():
    by_name = applications.get("lnlstm_digits", weights="pretrained")
    by_builder = applications.LNLSTMClassifier(weights="lnlstm_digits")
    by_path = applications.LNLSTMClassifier(weights=str(presets.resolve("lnlstm_digits")))
    x, _ = TASKS["digits_rows"].load("test")
    expected = keras.ops.convert_to_numpy(by_name(x[:16]))
    for model in (by_builder, by_path, presets.load_preset("lnlstm_digits")):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x[:16])), expected, atol=1e-6)
    random_init = applications.get("lnlstm_digits")
    assert not np.allclose(keras.ops.convert_to_numpy(random_init(x[:16])), expected, atol=1e-3)


def test_wrong_builder_or_arguments_are_refused():
    with pytest.raises(applications.PresetError, match="holds weights of LSTMClassifier"):
        applications.LNLSTMClassifier(weights="lstm_digits")
    with pytest.raises(applications.PresetError, match="units: preset 64 vs requested 32"):
        applications.LNLSTMClassifier(units=32, weights="lnlstm_digits")
    with pytest.raises(applications.PresetError, match="No preset named 'missing_preset'"):
        applications.LNLSTMClassifier(weights="missing_preset")


def test_checksum_mismatch_is_refused(preset_copy):
    weights = preset_copy / presets.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(applications.PresetError, match="checksum mismatch"):
        applications.LNLSTMClassifier(weights=str(preset_copy))
    with pytest.raises(applications.PresetError, match="checksum mismatch"):
        presets.load_preset(preset_copy)


@pytest.mark.parametrize("missing", presets.PRESET_FILES)
def test_missing_file_is_refused(preset_copy, missing):
    (preset_copy / missing).unlink()
    with pytest.raises(applications.PresetError, match=f"missing {missing}"):
        presets.load_preset(preset_copy)


def test_weights_that_do_not_fit_are_refused(preset_copy, tmp_path):
    # Weights of another architecture under a correct checksum.
    other = applications.LNLSTMCharLM(units=8, embedding_dim=4)
    other.save_weights(tmp_path / "other.weights.h5")
    shutil.copy(tmp_path / "other.weights.h5", preset_copy / presets.WEIGHTS_FILE)
    metadata = json.loads((preset_copy / presets.METADATA_FILE).read_text())
    metadata["sha256"][presets.WEIGHTS_FILE] = presets.sha256(preset_copy / presets.WEIGHTS_FILE)
    (preset_copy / presets.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(applications.PresetError, match="do not fit"):
        presets.load_preset(preset_copy)


def test_loading_uses_safe_mode(tmp_path):
    inputs = keras.Input((3,), name="x")
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    model = keras.Model(inputs, outputs)
    presets.save_preset(model, tmp_path / "unsafe", {"builder": "none"})
    with pytest.raises(applications.PresetError, match=r"(?is)'.*unsafe'.*safe mode.*lambda"):
        presets.load_preset(tmp_path / "unsafe")


def _rewrite(preset, file, edit):
    """Edits a file of a preset copy (its manifest left as it was)."""
    (preset / file).write_text(edit((preset / file).read_text()))


def test_an_edited_config_is_refused(preset_copy):
    _rewrite(preset_copy, presets.CONFIG_FILE, lambda t: t.replace('"softmax"', '"linear"'))
    with pytest.raises(applications.PresetError, match="checksum mismatch for config.json"):
        presets.load_preset(preset_copy)
    with pytest.raises(applications.PresetError, match="checksum mismatch for config.json"):
        applications.LNLSTMClassifier(weights=str(preset_copy))


def test_files_outside_the_manifest_are_refused(preset_copy):
    (preset_copy / "extra.bin").write_bytes(b"\0")
    with pytest.raises(applications.PresetError, match="extra.bin not covered by the sha256"):
        presets.load_preset(preset_copy)
    (preset_copy / "extra.bin").unlink()
    metadata = json.loads((preset_copy / presets.METADATA_FILE).read_text())
    del metadata["sha256"][presets.CONFIG_FILE]
    (preset_copy / presets.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(applications.PresetError, match="config.json not covered"):
        presets.load_preset(preset_copy)


def test_a_saved_preset_lists_every_file(tmp_path):
    model = applications.get("lnlstm_digits")
    presets.save_preset(model, tmp_path / "p", {"builder": "LNLSTMClassifier"})
    manifest = presets.read_metadata(tmp_path / "p")[1]["sha256"]
    assert sorted(manifest) == [presets.CONFIG_FILE, presets.WEIGHTS_FILE]


def test_every_shipped_preset_has_a_full_manifest():
    assert set(presets.available_presets()) == set(zoo.list_entries())
    for name in presets.available_presets():
        kind = zoo.entry(name).kind
        _, metadata = presets.read_metadata(name, kind=kind)
        assert metadata.get("kind", "model") == kind
        weights = presets.WEIGHTS_FILES[kind]
        assert presets.CONFIG_FILE in metadata["sha256"] and weights in metadata["sha256"]


def test_a_bare_name_never_resolves_to_the_working_directory(tmp_path, monkeypatch):
    lookalike = tmp_path / "lnlstm_digits"
    shutil.copytree(presets.resolve("lnlstm_digits"), lookalike)
    monkeypatch.chdir(tmp_path)
    assert presets.resolve("lnlstm_digits") != lookalike
    assert presets.resolve("lnlstm_digits").resolve() != lookalike.resolve()
    assert presets.resolve("./lnlstm_digits").resolve() == lookalike.resolve()
    with pytest.raises(applications.PresetError, match="No preset named 'not_in_zoo'"):
        (tmp_path / "not_in_zoo").mkdir()
        presets.resolve("not_in_zoo")
    for path in ("./x", "../x", "~/x", "/abs/x", "a/b"):
        assert presets.looks_like_path(path)
    assert not presets.looks_like_path("lnlstm_digits")


def test_a_user_preset_shadows_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv(presets.ZOO_ENV, str(tmp_path))
    assert presets.locations("lnlstm_digits")[0][1] == "shipped"
    shutil.copytree(presets.resolve("lnlstm_digits"), tmp_path / "lnlstm_digits")
    found = presets.locations("lnlstm_digits")
    assert [kind for _, kind in found] == ["user", "shipped"]
    assert presets.resolve("lnlstm_digits") == tmp_path / "lnlstm_digits"
    assert presets.training_target("x") == tmp_path / "x"
    with pytest.raises(FileExistsError, match="already holds a preset"):
        presets.training_target("lnlstm_digits")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
            presets.epochs_or_default(bad, 40)
    assert presets.epochs_or_default(None, 40) == 40


def test_save_preset_never_overwrites_without_intent(tmp_path):
    model = applications.LNLSTMClassifier(units=4)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 8, 8)), np.zeros(4), verbose=0)  # creates optimizer variables
    presets.save_preset(model, tmp_path / "p", {"builder": "LNLSTMClassifier"})
    config = json.loads((tmp_path / "p" / presets.CONFIG_FILE).read_text())
    assert "compile_config" not in config  # architecture and weights only
    bare = applications.LNLSTMClassifier(units=4)
    bare.load_weights(tmp_path / "p" / presets.WEIGHTS_FILE)  # no optimizer state inside
    before = (tmp_path / "p" / presets.METADATA_FILE).read_text()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        presets.save_preset(model, tmp_path / "p", {"builder": "LNLSTMClassifier"})
    assert (tmp_path / "p" / presets.METADATA_FILE).read_text() == before
    presets.save_preset(model, tmp_path / "p", {"builder": "LNLSTMClassifier"}, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(presets.PRESET_FILES)


def test_train_stores_a_loadable_preset(tmp_path):
    model, metadata = zoo.train(
        "lnlstm_digits", zoo_dir=tmp_path, epochs=2, log_dir=tmp_path / "logs", verbose=0
    )
    assert metadata["training"]["epochs_run"] == 2
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))  # TensorBoard
    loaded = presets.load_preset(tmp_path / "lnlstm_digits")
    results = models.score(loaded, "digits_rows", verbose=0)
    np.testing.assert_allclose(results["loss"], metadata["metrics"]["test"]["loss"], rtol=1e-4)
    with pytest.raises(FileExistsError, match="already holds a preset"):
        zoo.train("lnlstm_digits", zoo_dir=tmp_path, epochs=1, verbose=0)


def test_from_preset_returns_a_compiled_model_that_scores_its_record():
    from kzoo.datasets import digits

    model = applications.LNLSTMClassifier.from_preset("lnlstm_digits")
    assert model.compiled and model.name == "lnlstm_digits"
    x, y = digits.load("test")
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    recorded = presets.read_metadata("lnlstm_digits")[1]["metrics"]["test"]
    np.testing.assert_allclose(results["accuracy"], recorded["accuracy"], atol=2e-3)
    assert not applications.LNLSTMClassifier.from_preset("lnlstm_digits", compile=False).compiled
    assert set(applications.LNLSTMClassifier.presets) == {"lnlstm_digits"}
    assert set(applications.FCN.presets) == {"fcn_texture_scenes", "deeplabv3plus_texture_scenes"}
    with pytest.raises(applications.PresetError, match="holds a LSTMClassifier, not a LNLSTM"):
        applications.LNLSTMClassifier.from_preset("lstm_digits")


def test_a_new_head_keeps_the_pretrained_body_and_fine_tunes():
    from kzoo.datasets import digits

    pretrained = applications.LNLSTMClassifier.from_preset("lnlstm_digits", compile=False)
    model = applications.LNLSTMClassifier.from_preset("lnlstm_digits", num_classes=2)
    assert model.output_shape == (None, 2)
    for a, b in zip(
        model.get_layer("ln_lstm").get_weights(), pretrained.get_layer("ln_lstm").get_weights()
    ):
        np.testing.assert_array_equal(a, b)
    x, y = digits.load("train")
    history = model.fit(x[:64], (y[:64] >= 5).astype("int32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    segmenter = applications.FCN.from_preset("fcn_texture_scenes", num_classes=3)
    assert segmenter.output_shape == (None, 64, 64, 3) and segmenter.compiled


def test_a_new_head_reaches_into_a_nested_keras_cv_model():
    # keras-cv's DeepLabV3Plus is one nested layer with auto-named inner
    # models; everything but its classifier must keep the preset's weights.
    pretrained = applications.FCN.from_preset("deeplabv3plus_texture_scenes", compile=False)
    model = applications.FCN.from_preset(
        "deeplabv3plus_texture_scenes", num_classes=3, compile=False
    )
    assert model.output_shape == (None, 64, 64, 3)
    new, old = model.weights, pretrained.weights
    assert len(new) == len(old)
    differ = [a.path for a, b in zip(new, old) if tuple(a.shape) != tuple(b.shape)]
    assert len(differ) == 2 and all("classifier" in path for path in differ)
    for a, b in zip(new, old):
        if tuple(a.shape) == tuple(b.shape):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_list_models_filters_by_glob_and_pretrained():
    assert applications.list_models("*_char_lm") == ["lnlstm_char_lm", "lstm_char_lm"]
    assert set(applications.list_models(pretrained=True)) == set(PRETRAINED)
    assert applications.list_models(pretrained=False) == []
