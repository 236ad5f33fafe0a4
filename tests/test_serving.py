"""TF Serving export and its verification in a TensorFlow-only process."""

import json

import keras
import numpy as np
import pytest

from kzoo import applications
from kzoo import callbacks
from kzoo import layers
from kzoo import serving
from kzoo.datasets import digits


def _trained_classifier(epochs=1, **fit_kwargs):
    """A small LN-LSTM digits classifier trained on the current backend."""
    keras.utils.set_random_seed(0)
    model = applications.LNLSTMClassifier(units=8, name="tiny_digits")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    x, y = digits.load("train")
    history = model.fit(x[:256], y[:256], epochs=epochs, batch_size=64, verbose=0, **fit_kwargs)
    return model, history


@pytest.mark.multibackend
def test_export_from_any_backend_is_a_plain_tensorflow_graph(tmp_path):
    model, _ = _trained_classifier()
    x, _ = digits.load("test")
    path = serving.export(model, tmp_path, sample_inputs={"pixel_rows": x[:5]})
    assert path == tmp_path / "tiny_digits" / "serving" / "1"
    info = json.loads((path / "assets.extra" / "kzoo_export.json").read_text())
    assert info["source_backend"] == keras.backend.backend()
    report = serving.verify(path, model=model)  # compares with this backend's model too
    assert report.ok
    assert report.inputs == {"pixel_rows": ["float32", [None, 8, 8]]}
    assert report.outputs == {"class_probabilities": ["float32", [None, 10]]}
    assert max(report.max_abs_diff.values()) < 1e-4


@pytest.mark.multibackend
def test_gru_sequence_model_exports_with_variable_length(tmp_path):
    inputs = keras.Input((None, 3), name="sensor_readings")
    x = layers.LayerNormGRU(6, return_sequences=True)(inputs)
    outputs = keras.layers.Dense(2, name="forecast")(x)
    model = keras.Model(inputs, outputs, name="gru_forecaster")
    rng = np.random.default_rng(0)
    path = serving.export(
        model,
        tmp_path,
        sample_inputs={"sensor_readings": rng.normal(size=(2, 13, 3)).astype("float32")},
    )
    report = serving.verify(path, model=model)
    assert report.inputs == {"sensor_readings": ["float32", [None, None, 3]]}
    assert report.outputs == {"forecast": ["float32", [None, None, 2]]}


def _two_output_model():
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(3, name="scores")(inputs)
    return keras.Model(
        inputs, {"scores": hidden, "details": keras.layers.Dense(5)(hidden)}, name="two_heads"
    )


@pytest.mark.multibackend
def test_serving_default_returns_the_chosen_outputs_and_all_outputs_the_rest(tmp_path):
    import tensorflow as tf

    model = _two_output_model()
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    path = serving.export(model, tmp_path, sample_inputs={"features": x}, outputs=["scores"])
    report = serving.verify(path, model=model)
    assert report.outputs == {"scores": ["float32", [None, 3]]}
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures["serving_default"](features=x)) == {"scores"}
    served = loaded.signatures["all_outputs"](features=x)
    expected = model(x)
    for name in ("scores", "details"):
        np.testing.assert_allclose(served[name], keras.ops.convert_to_numpy(expected[name]), 1e-5)
    with pytest.raises(ValueError, match="export: `outputs` must name some of"):
        serving.export(model, tmp_path, outputs=["affinities"])
    # The all_outputs signature is verified too: a tampered reference of an
    # output serving_default leaves out is caught.
    reference = path / "assets.extra" / "kzoo_reference.npz"
    with np.load(reference) as ref:
        data = dict(ref)
    data["output/details"] = data["output/details"] + 1.0
    np.savez(reference, **data)
    with pytest.raises(serving.VerificationError, match="'details' differs"):
        serving.verify(path)


def test_the_zoo_serves_the_rwn_segmentation_and_its_affinities_on_request(tmp_path):
    import tensorflow as tf

    from kzoo.zoo import models as zoo_models
    from kzoo.zoo import registry

    path = zoo_models.export(registry.entry("rwn_texture_scenes"), tmp_path)
    assert set(serving.verify(path).outputs) == {"segmentation_logits"}
    signatures = tf.saved_model.load(str(path)).signatures
    outputs = signatures["all_outputs"].structured_outputs
    assert set(outputs) == {"segmentation_logits", "affinities"}
    assert outputs["affinities"].shape.as_list() == [None, 64, 64, 81]


def test_versions_increment_and_are_never_overwritten(tmp_path):
    model = applications.LNLSTMClassifier(units=4, name="digits_model")
    first = serving.export(model, tmp_path)
    second = serving.export(model, tmp_path)
    assert (first.name, second.name) == ("1", "2")
    saved = (first / "saved_model.pb").read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten"):
        serving.export(model, tmp_path, version=1)
    assert (first / "saved_model.pb").read_bytes() == saved
    assert serving.export(model, tmp_path, version=7).name == "7"
    assert serving.export(model, tmp_path).name == "8"
    # No temporary directories are left behind.
    assert sorted(p.name for p in (tmp_path / "digits_model" / "serving").iterdir()) == [
        "1",
        "2",
        "7",
        "8",
    ]
    config = (tmp_path / "models.config").read_text()
    assert 'name: "digits_model"' in config
    assert 'base_path: "/models/digits_model/serving"' in config
    assert 'model_platform: "tensorflow"' in config
    with pytest.raises(ValueError, match="not a valid serving name"):
        serving.export(model, tmp_path, name="bad name/..")


def test_predict_request_matches_the_signature(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    model = applications.get("lnlstm_digits", weights="pretrained")
    path = serving.export(model, tmp_path)
    x, y = digits.load("test")

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lnlstm_digits"
    request.model_spec.signature_name = "serving_default"
    request.inputs["pixel_rows"].CopyFrom(tf.make_tensor_proto(x[:8]))

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    assert set(request.inputs) == set(specs)
    feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    for name, value in feeds.items():
        assert tf.as_dtype(value.dtype) == specs[name].dtype
        assert specs[name].shape.is_compatible_with(value.shape)
    served = signature(**feeds)["class_probabilities"].numpy()
    np.testing.assert_allclose(served, keras.ops.convert_to_numpy(model(x[:8])), atol=1e-5)
    assert (served.argmax(-1) == y[:8]).mean() >= 0.75


def test_tampered_reference_outputs_fail_verification(tmp_path):
    model = applications.LNLSTMClassifier(units=4, name="digits_model")
    path = serving.export(model, tmp_path)
    reference = path / "assets.extra" / "kzoo_reference.npz"
    with np.load(reference) as ref:
        data = dict(ref)
    data["output/class_probabilities"] = data["output/class_probabilities"][:, ::-1]
    np.savez(reference, **data)
    with pytest.raises(serving.VerificationError, match="differs from recorded Keras outputs"):
        serving.verify(path)


def test_generic_signature_names_fail_verification(tmp_path):
    inputs = keras.Input((4,))  # no name: the signature would say keras_tensor_N
    model = keras.Model(inputs, keras.layers.Dense(2, name="scores")(inputs), name="unnamed")
    path = serving.export(model, tmp_path)
    with pytest.raises(serving.VerificationError, match="keras_tensor.*not meaningful"):
        serving.verify(path)


def test_not_an_export_is_refused(tmp_path):
    with pytest.raises(serving.VerificationError, match="not a kzoo SavedModel export"):
        serving.verify(tmp_path)


def _raw_saved_model(path, body):
    """A hand-made SavedModel with kzoo's reference files, to test the scan."""
    import tensorflow as tf

    module = tf.Module()
    module.serve = tf.function(
        body, input_signature=[tf.TensorSpec((None, 3), tf.float32, name="values")]
    )
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    (path / "assets.extra").mkdir()
    x = np.ones((2, 3), "float32")
    np.savez(
        path / "assets.extra" / "kzoo_reference.npz", **{"input/values": x, "output/doubled": 2 * x}
    )


def test_graph_scan_finds_python_ops_xla_and_device_pins(tmp_path):
    import tensorflow as tf

    def with_py_function(values):
        return {"doubled": tf.numpy_function(lambda v: 2 * v, [values], tf.float32)}

    def pinned(values):
        with tf.device("/device:CPU:0"):
            return {"doubled": values * 2.0}

    def clean(values):
        return {"doubled": values * 2.0}

    double = tf.function(lambda v: v * 2.0, jit_compile=True)

    def xla(values):
        return {"doubled": double(values)}

    bodies = (("py", with_py_function), ("pinned", pinned), ("xla", xla), ("clean", clean))
    for name, body in bodies:
        _raw_saved_model(tmp_path / name, body)
    from kzoo.serving import _verify_worker

    assert any("PyFunc" in p for p in _verify_worker.graph_problems(tmp_path / "py"))
    assert any("pinned to device" in p for p in _verify_worker.graph_problems(tmp_path / "pinned"))
    assert any("compiled with XLA" in p for p in _verify_worker.graph_problems(tmp_path / "xla"))
    assert _verify_worker.graph_problems(tmp_path / "clean") == []
    with pytest.raises(serving.VerificationError, match="PyFunc|failed"):
        serving.verify(tmp_path / "py")
    with pytest.raises(serving.VerificationError, match="pinned to device"):
        serving.verify(tmp_path / "pinned")
    assert serving.verify(tmp_path / "clean").ok


def test_serving_export_callback_exports_each_improvement(tmp_path):
    x_val, y_val = digits.load("validation")
    export_cb = callbacks.ServingExport(tmp_path, monitor="val_loss", verbose=0)
    model, history = _trained_classifier(
        epochs=4, validation_data=(x_val, y_val), callbacks=[export_cb]
    )
    losses = history.history["val_loss"]
    improvements = sum(v < min(losses[:i], default=np.inf) for i, v in enumerate(losses))
    assert len(export_cb.exported) == improvements >= 1
    assert [p.name for p in export_cb.exported] == [str(i + 1) for i in range(improvements)]
    assert export_cb.best == min(losses)  # the last version is the best model
    assert serving.verify(export_cb.exported[-1]).ok


def test_serving_export_callback_passes_the_chosen_outputs(tmp_path):
    model = _two_output_model()
    model.compile("sgd", loss={"scores": "mse", "details": "mse"})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = {"scores": np.zeros((8, 3), "float32"), "details": np.zeros((8, 5), "float32")}
    export_cb = callbacks.ServingExport(tmp_path, outputs=["scores"], verbose=0)
    model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0, callbacks=[export_cb])
    info = json.loads((export_cb.exported[0] / "assets.extra" / "kzoo_export.json").read_text())
    assert info["outputs"] == ["scores"] and set(info["all_outputs"]) == {"scores", "details"}


def test_serving_export_callback_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        callbacks.ServingExport(tmp_path, mode="lowest")
    export_cb = callbacks.ServingExport(tmp_path, monitor="val_accuracy")
    assert export_cb.mode == "max"
    with pytest.raises(ValueError, match="'val_accuracy' is not in the epoch logs"):
        _trained_classifier(callbacks=[export_cb])


def test_models_config_is_tf_servings_own_protobuf(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    (tmp_path / "empty" / "serving").mkdir(parents=True)
    (tmp_path / "a" / "serving" / "3").mkdir(parents=True)
    (tmp_path / 'q"uote' / "serving" / "1").mkdir(parents=True)
    text = serving.write_models_config(tmp_path, serving_root="/srv/").read_text()
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    models = {m.name: m.base_path for m in config.model_config_list.config}
    assert models == {"a": "/srv/a/serving", 'q"uote': '/srv/q"uote/serving'}


def test_stale_export_temporaries_are_removed(tmp_path):
    import importlib
    import os
    import time

    model, _ = _trained_classifier()
    serving_dir = tmp_path / "tiny_digits" / "serving"
    stale, fresh = serving_dir / ".export-killed", serving_dir / ".export-running"
    for tmp in (stale, fresh):
        (tmp / "model").mkdir(parents=True)
    hours_ago = time.time() - 2 * importlib.import_module("kzoo.serving.export").STALE_AFTER_S
    os.utime(stale, (hours_ago, hours_ago))
    serving.export(model, tmp_path)
    assert not stale.exists() and fresh.exists()  # never one an export may be writing
    with pytest.raises(ValueError, match="version must be an integer >= 1"):
        serving.export(model, tmp_path, version=-5)


def test_serving_export_never_publishes_below_the_served_version(tmp_path):
    x_val, y_val = digits.load("validation")
    first = callbacks.ServingExport(tmp_path, verbose=0)
    model, _ = _trained_classifier(epochs=3, validation_data=(x_val, y_val), callbacks=[first])
    served = serving.exported_versions(tmp_path, "tiny_digits")
    assert served[max(served)]["val_loss"] == first.best
    # A second, worse run (fresh weights, one epoch, fresh callback): nothing new.
    second = callbacks.ServingExport(tmp_path, verbose=0)
    _trained_classifier(epochs=1, validation_data=(x_val, y_val), callbacks=[second])
    assert second.exported == [] and serving.exported_versions(tmp_path, "tiny_digits") == served
    # Told to, it publishes within its own run.
    forced = callbacks.ServingExport(tmp_path, verbose=0, allow_worse=True)
    _trained_classifier(epochs=1, validation_data=(x_val, y_val), callbacks=[forced])
    assert len(forced.exported) == 1
    # A served version without a recorded score: refuse to guess.
    (tmp_path / "other" / "serving" / "1").mkdir(parents=True)
    unknown = callbacks.ServingExport(tmp_path, name="other", verbose=0)
    with pytest.raises(ValueError, match="has no recorded 'val_loss'"):
        _trained_classifier(validation_data=(x_val, y_val), callbacks=[unknown])


def test_a_non_finite_score_is_never_published(tmp_path):
    export_cb = callbacks.ServingExport(tmp_path, monitor="loss", verbose=0)
    export_cb.set_model(_trained_classifier()[0])
    export_cb.on_train_begin()
    export_cb.on_epoch_end(0, {"loss": float("nan")})
    assert export_cb.exported == []
