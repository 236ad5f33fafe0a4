"""Tests of the learned optimizer (S3): the step, LSTMOptimizer, meta-training."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from keras import ops

from kzoo import backend
from kzoo.optimizers import LSTMOptimizer
from kzoo.optimizers import learned
from kzoo.optimizers import meta
from kzoo.optimizers import problems
from kzoo.zoo import presets
from tests.helpers import _sigmoid

pytestmark = pytest.mark.multibackend
PRESET = "lstm_optimizer_digits_mlp"


def np_preprocess(g, p=10.0):
    out = np.empty(g.shape + (2,))
    for idx, v in np.ndenumerate(g):
        out[idx] = (
            (np.log(abs(v)) / p, np.sign(v)) if abs(v) >= np.exp(-p) else (-1.0, np.exp(p) * v)
        )
    return out


def np_step(phi, g, state, scale, preprocess, inputs="gradient"):
    """An independent numpy LSTM optimizer step, one coordinate at a time
    (for `inputs="moments"`, Adam's moments as Keras computes them, the bias
    corrections `1 - beta^t` carried in the state)."""
    layers = len(state) // 2
    update = np.empty(g.shape)
    new_state = [np.empty_like(s) for s in state]
    for idx, v in np.ndenumerate(g):
        x = np_preprocess(np.array(v))[()] if preprocess else np.array([v])
        if inputs == "moments":
            m, second, t1, t2 = state[-1][idx]
            m, second = 0.9 * m + 0.1 * v, 0.999 * second + 0.001 * v * v
            t1, t2 = 1 - 0.9 * (1 - t1), 1 - 0.999 * (1 - t2)  # 1 - beta^(t+1)
            denominator = (np.sqrt(second) + 1e-7) / np.sqrt(t2)
            x = np.concatenate([x, [m / t1 / denominator, v / denominator]])
            new_state[-1][idx] = m, second, t1, t2
        features = x
        for layer in range(layers):
            kernel, recurrent, bias = phi[3 * layer : 3 * layer + 3]
            h, c = state[2 * layer][idx], state[2 * layer + 1][idx]
            i, f, cand, o = np.split(x @ kernel + h @ recurrent + bias, 4)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(cand)
            h = _sigmoid(o) * np.tanh(c)
            new_state[2 * layer][idx], new_state[2 * layer + 1][idx] = h, c
            x = h
        if inputs == "moments":
            direction, log_scale = np.concatenate([x, features]) @ phi[-2] + phi[-1]
            update[idx] = scale * direction * np.exp(5.0 * np.tanh(log_scale / 5.0))
        else:
            update[idx] = scale * (x @ phi[-2] + phi[-1])[0]
    return update, new_state


def test_preprocessing_matches_the_paper():
    g = np.array([3.0, -2e-3, 1e-5, -1e-6, 0.0, np.exp(-10.0)], "float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(learned.preprocess_gradients(g)),
        np_preprocess(g.astype("float64")),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "preprocess, inputs", [(True, "gradient"), (False, "gradient"), (True, "moments")]
)
def test_step_matches_numpy_reference(preprocess, inputs):
    rng = np.random.default_rng(0)
    phi = learned.initial_meta_parameters(5, 2, preprocess, seed=3, inputs=inputs)
    phi = [p + 0.3 * rng.standard_normal(p.shape).astype("float32") for p in phi]
    g = (rng.standard_normal((3, 4)) * np.logspace(-6, 1, 12).reshape(3, 4)).astype("float32")
    state = [rng.standard_normal((3, 4, 5)).astype("float32") * 0.5 for _ in range(4)]
    if inputs == "moments":  # m, v > 0, and 1 - beta^t in (0, 1] (or 0 before the first step)
        moments = rng.uniform(0.0, 1.0, (3, 4, 4)) * [1e-3, 1e-4, 1.0, 1.0]
        moments[0, 0] = 0.0
        state.append(moments.astype("float32"))
    update, new_state = learned.step(
        phi, g, state, output_scale=0.1, preprocess=preprocess, inputs=inputs
    )
    ref_update, ref_state = np_step(
        [p.astype("float64") for p in phi],
        g.astype("float64"),
        [s.astype("float64") for s in state],
        0.1,
        preprocess,
        inputs,
    )
    np.testing.assert_allclose(ops.convert_to_numpy(update), ref_update, rtol=1e-4, atol=1e-6)
    for a, b in zip(new_state, ref_state):
        np.testing.assert_allclose(ops.convert_to_numpy(a), b, rtol=1e-4, atol=1e-6)


def _digits_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(20, activation="sigmoid"), keras.layers.Dense(10)]
    )


def _digits():
    x, y, _ = problems.load_dataset("digits")
    return x[:512], y[:512]


def test_fit_with_the_pretrained_optimizer_from_the_zoo(tmp_path):
    model = _digits_model()
    optimizer = LSTMOptimizer.from_preset(PRESET)
    model.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = _digits()
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=128, epochs=8, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < 0.6 * before
    phi, _ = learned.load_meta_parameters(PRESET)
    for variable, value in zip(optimizer.meta_parameters, phi):  # fit never changes phi
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), value)
    assert float(ops.convert_to_numpy(optimizer.skipped_updates)) == 0.0

    # The state travels with the model: a reloaded model continues identically.
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, LSTMOptimizer)
    for a, b in zip(optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    model.fit(x, y, batch_size=128, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=128, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_keras_optimizer_runs_exactly_the_meta_trained_step():
    phi, architecture = learned.load_meta_parameters(PRESET)
    problem = problems.DigitsMLP()
    trainer = meta.MetaTrainer(
        problem, **{k: architecture[k] for k in ("preprocess", "output_scale", "exponent")}
    )
    by_meta = trainer.run(phi, seed=7, num_problems=2, horizon=20)
    by_keras = meta.optimize(
        LSTMOptimizer.from_preset(PRESET), problem, seed=7, num_problems=2, horizon=20
    )
    # The same step to float precision at first. Later the two compiled
    # programs (fit's and the meta-trainer's; XLA fuses them differently,
    # depending on the CPU) drift apart: the preprocessing's sign(g) flips on
    # rounding-level differences of near-zero gradient coordinates, and the
    # optimizee amplifies each flip (seen on JAX on an AVX-512/AMX machine:
    # equal to 1e-4 for 13 steps, 3.5e-3 apart at step 20).
    np.testing.assert_allclose(by_keras[:11], by_meta[:11], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(by_keras, by_meta, rtol=2e-2)
    assert by_keras[-1].mean() < 0.7 * by_keras[0].mean()


def _three_variables():
    rng = np.random.default_rng(1)
    shapes = [(2, 3), (4,), (3, 1)]
    return [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]


def test_one_batched_step_over_all_variables_equals_a_step_per_variable():
    rng = np.random.default_rng(0)
    phi = learned.initial_meta_parameters(units=5, num_layers=2, seed=3)
    phi = [p + 0.3 * rng.standard_normal(p.shape).astype("float32") for p in phi]
    variables = _three_variables()
    values = [ops.convert_to_numpy(v).astype("float64") for v in variables]
    grads = [
        [(rng.standard_normal(v.shape) * 10.0 ** rng.uniform(-6, 1)).astype("float32")]
        for v in values
    ]
    grads = [g + [(rng.standard_normal(v.shape)).astype("float32")] for g, v in zip(grads, values)]
    optimizer = LSTMOptimizer(phi, units=5, output_scale=0.1, learning_rate=0.5)
    states = [[np.zeros((*v.shape, 5)) for _ in range(4)] for v in values]
    for t in range(2):
        optimizer.apply([g[t] for g in grads], variables)
        for k, g in enumerate(grads):
            update, states[k] = np_step(
                [p.astype("float64") for p in phi], g[t].astype("float64"), states[k], 0.1, True
            )
            values[k] = values[k] + 0.5 * update
    for k, variable in enumerate(variables):
        np.testing.assert_allclose(ops.convert_to_numpy(variable), values[k], rtol=1e-5, atol=1e-6)
        for got, want in zip(optimizer.state_of(variable), states[k]):
            np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=1e-4, atol=1e-6)

    # A variable without a gradient keeps its value and state; the others
    # take the same step as when all variables are updated.
    partial, full = (LSTMOptimizer(phi, units=5, output_scale=0.1) for _ in range(2))
    a, b = _three_variables(), _three_variables()
    partial.build(a)
    full.build(b)
    for t in range(2):
        with pytest.warns(UserWarning, match="Gradients do not exist"):
            partial.apply([grads[0][t], None, grads[2][t]], a)
        full.apply([g[t] for g in grads], b)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(a[1]), ops.convert_to_numpy(_three_variables()[1])
    )
    assert all(np.all(ops.convert_to_numpy(s) == 0) for s in partial.state_of(a[1]))
    for k in (0, 2):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a[k]), ops.convert_to_numpy(b[k]), rtol=1e-6
        )
        for p, q in zip(partial.state_of(a[k]), full.state_of(b[k])):
            np.testing.assert_allclose(ops.convert_to_numpy(p), ops.convert_to_numpy(q), rtol=1e-6)


def test_a_bfloat16_state_halves_the_memory_and_trains_alike():
    x, y = _digits()
    runs = {}
    for dtype in ("float32", "bfloat16"):
        model = _digits_model()
        optimizer = LSTMOptimizer.from_preset(PRESET, state_dtype=dtype)
        model.compile(
            optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        history = model.fit(x, y, batch_size=128, epochs=4, shuffle=False, verbose=0)
        assert all(keras.backend.standardize_dtype(s.dtype) == dtype for s in optimizer.lstm_state)
        itemsize = {"float32": 4, "bfloat16": 2}[dtype]
        nbytes = sum(itemsize * int(np.prod(s.shape)) for s in optimizer.lstm_state)
        runs[dtype] = history.history["loss"][-1], nbytes / model.count_params()
    assert runs["float32"][1] == 2 * 2 * 20 * 4 and runs["bfloat16"][1] == 2 * 2 * 20 * 2
    assert runs["bfloat16"][0] == pytest.approx(runs["float32"][0], rel=0.05)


def test_the_untrained_moments_optimizer_is_adam_and_keeps_float32_moments():
    x, y = _digits()
    runs = {}
    for name, optimizer in (
        ("moments", LSTMOptimizer(inputs="moments", output_scale=1e-3, state_dtype="bfloat16")),
        ("adam", keras.optimizers.Adam(1e-3)),
    ):
        keras.utils.set_random_seed(0)
        model = _digits_model()
        initial = [ops.convert_to_numpy(w) for w in model.trainable_weights]
        model.compile(
            optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(x[:512], y[:512], batch_size=128, epochs=2, shuffle=False, verbose=0)
        runs[name] = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    for a, b in zip(runs["moments"], runs["adam"]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(runs["adam"], initial)) > 1e-3
    moments = LSTMOptimizer(inputs="moments", state_dtype="bfloat16")
    config = moments.get_config()
    clone = LSTMOptimizer.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config and clone.inputs == "moments"
    kernel = model.trainable_weights[0]
    clone.build([kernel])
    state = clone.state_of(kernel)
    assert [tuple(s.shape) for s in state] == [(*kernel.shape, 20)] * 4 + [(*kernel.shape, 4)]
    dtypes = [keras.backend.standardize_dtype(s.dtype) for s in clone.lstm_state]
    assert dtypes == ["bfloat16"] * 4 + ["float32"]


def test_non_finite_gradients_skip_the_update_and_are_counted():
    a, b = keras.Variable(np.ones((2, 3), "float32")), keras.Variable(np.ones(4, "float32"))
    optimizer = LSTMOptimizer(output_scale=0.1)
    optimizer.build([a, b])
    bad = np.ones((2, 3), "float32")
    bad[1, 2] = np.nan
    optimizer.apply([bad, np.ones(4, "float32")], [a, b])
    np.testing.assert_array_equal(ops.convert_to_numpy(a), np.ones((2, 3)))
    assert not np.allclose(ops.convert_to_numpy(b), 1.0)
    assert np.isfinite(ops.convert_to_numpy(b)).all()
    assert all(np.all(ops.convert_to_numpy(s) == 0) for s in optimizer.state_of(a))
    assert all(np.any(ops.convert_to_numpy(s) != 0) for s in optimizer.state_of(b))
    assert float(ops.convert_to_numpy(optimizer.skipped_updates)) == 1.0
    optimizer.apply([np.full((2, 3), np.inf, "float32"), np.ones(4, "float32")], [a, b])
    assert float(ops.convert_to_numpy(optimizer.skipped_updates)) == 2.0


def test_config_round_trip_and_state_shapes():
    optimizer = LSTMOptimizer.from_preset(PRESET, learning_rate=0.5)
    config = optimizer.get_config()
    assert config["output_scale"] == 0.1 and config["learning_rate"] == 0.5
    for carried, loaded in zip(config["weights"], learned.load_meta_parameters(PRESET)[0]):
        np.testing.assert_array_equal(np.asarray(carried, "float32"), loaded)
    clone = LSTMOptimizer.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    v = keras.Variable(np.zeros((5, 7), "float32"))
    clone.build([v])
    assert [tuple(s.shape) for s in clone.state_of(v)] == [(5, 7, 20)] * 4
    for p, q in zip(clone._initial_phi, optimizer._initial_phi):
        np.testing.assert_array_equal(p, q)


def test_a_saved_model_loads_without_the_preset_directory(tmp_path):
    shutil.copytree(presets.resolve(PRESET), tmp_path / "phi")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=LSTMOptimizer.from_preset(str(tmp_path / "phi")), loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    shutil.rmtree(tmp_path / "phi")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    for a, b in zip(restored.optimizer.meta_parameters, model.optimizer.meta_parameters):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    restored.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"units": 0}, "units must be a positive int"),
        ({"num_layers": -1}, "num_layers must be a positive int"),
        ({"exponent": 0.0}, "exponent must be a finite number > 0"),
        ({"output_scale": float("nan")}, "output_scale must be a finite number > 0"),
        ({"learning_rate": -1.0}, "learning_rate must be a finite number > 0"),
        ({"preprocess": "yes"}, "preprocess must be True or False"),
        ({"weights": 3}, "weights must be None, a preset name"),
        ({"state_dtype": "float16"}, "state_dtype must be one of float32, bfloat16"),
        ({"inputs": "adam"}, "inputs must be one of"),
    ],
)
def test_bad_arguments_are_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LSTMOptimizer(**kwargs)


def test_a_gradient_of_the_wrong_shape_is_a_clear_error():
    optimizer = LSTMOptimizer(units=4, num_layers=1)
    variable = keras.Variable(np.zeros((2, 3), "float32"), name="w")
    optimizer.build([variable])
    with pytest.raises(ValueError, match="gradient of variable .*w.* has shape \\(3, 2\\)"):
        optimizer.apply([np.zeros((3, 2), "float32")], [variable])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: {**c, "learning_rate": 50.0}, "must hold exactly"),
        (lambda c: {**c, "clipnorm": 1.0}, "must hold exactly"),
        (lambda c: {k: v for k, v in c.items() if k != "units"}, "must hold exactly"),
        (lambda c: {**c, "output_scale": -1.0}, "output_scale must be a finite number"),
        (lambda c: {**c, "inputs": "moments"}, "lstm_0/kernel.*inputs='moments' needs"),
        (lambda c: {**c, "inputs": None}, "inputs must be one of"),
    ],
)
def test_optimizer_presets_hold_only_their_architecture(tmp_path, edit, message):
    copy = tmp_path / PRESET
    shutil.copytree(presets.resolve(PRESET), copy)
    config = copy / presets.CONFIG_FILE
    config.write_text(json.dumps(edit(json.loads(config.read_text()))))
    metadata = json.loads((copy / presets.METADATA_FILE).read_text())
    metadata["sha256"][presets.CONFIG_FILE] = presets.sha256(config)  # a consistent edit
    (copy / presets.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(presets.PresetError, match=message):
        LSTMOptimizer.from_preset(str(copy))
    # Without the manifest update, the edit is a checksum mismatch.
    metadata["sha256"][presets.CONFIG_FILE] = "0" * 64
    (copy / presets.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(presets.PresetError, match="checksum mismatch for config.json"):
        LSTMOptimizer.from_preset(str(copy))


def test_meta_parameters_that_do_not_fit_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lstm_0/kernel.*needs"):
        LSTMOptimizer(weights=PRESET, preprocess=False)
    with pytest.raises(ValueError, match="units=8"):
        LSTMOptimizer(weights=learned.initial_meta_parameters(units=20), units=8)
    with pytest.raises(ValueError, match="inputs='moments' needs"):
        LSTMOptimizer(weights=PRESET, inputs="moments")
    copy = tmp_path / PRESET
    shutil.copytree(presets.resolve(PRESET), copy)
    with open(copy / learned.PHI_FILE, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(presets.PresetError, match="checksum"):
        LSTMOptimizer.from_preset(str(copy))
    with pytest.raises(presets.PresetError, match="of kind 'model', not 'optimizer'"):
        learned.load_meta_parameters("lnlstm_digits")


class _Linear:
    """f(theta) = c . theta + 50: its gradient does not depend on theta, so the
    stop-gradient meta-gradient equals the true derivative of the meta-loss
    (and the loss stays positive, as `"log_ratio"` needs)."""

    name = "linear"

    def sample(self, rng, k):
        return [rng.standard_normal((k, 3)).astype("float32")], {
            "c": (rng.standard_normal((k, 3)) * np.array([1e-6, 0.1, 3.0])).astype("float32")
        }

    def batches(self, rng, k, steps):
        return {}

    def loss(self, params, constants, batch):
        return ops.sum(constants["c"] * params[0], axis=-1) + 50.0


@pytest.mark.parametrize(
    "objective, inputs, floor",
    [
        ("sum", "gradient", None),
        ("log_ratio", "gradient", None),
        ("log_ratio", "moments", None),
        ("log_ratio", "gradient", 0.5),
    ],
)
def test_meta_gradient_matches_finite_differences(objective, inputs, floor):
    problem = _Linear()
    trainer = meta.MetaTrainer(
        problem,
        units=4,
        horizon=5,
        unroll=5,
        num_problems=2,
        output_scale=0.5,
        objective=objective,
        inputs=inputs,
        log_ratio_floor=floor,
    )
    params, constants, _, state, reference = trainer._episode(
        problem, np.random.default_rng(0), 2, 5
    )
    train_unroll, eval_unroll = trainer._functions(problem)
    phi = [np.asarray(ops.convert_to_numpy(v), "float32") for v in trainer.phi]
    (value, (_, _, losses, _)), grads = train_unroll(phi, params, state, constants, {}, reference)
    losses = ops.convert_to_numpy(losses)
    expected = (
        losses[1:].sum(0).mean()
        if objective == "sum"
        else np.log(losses[1:] / losses[0] + (floor or meta.LOG_RATIO_FLOOR)).mean()
    )
    np.testing.assert_allclose(ops.convert_to_numpy(value), expected, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(1)
    direction = [rng.standard_normal(p.shape).astype("float32") for p in phi]
    eps = 1e-2

    def objective_at(sign):
        shifted = [p + sign * eps * d for p, d in zip(phi, direction)]
        return float(
            ops.convert_to_numpy(eval_unroll(shifted, params, state, constants, {}, reference)[0])
        )

    numeric = (objective_at(1) - objective_at(-1)) / (2 * eps)
    analytic = sum(float(np.sum(ops.convert_to_numpy(g) * d)) for g, d in zip(grads, direction))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def test_the_validation_score_adds_the_log_ratio_floor_only_when_set():
    curves = {"a": np.array([[4.0, 4.0], [2.0, 2.0], [0.04, 0.04]]), "b": np.full((3, 2), 1.0)}
    plain = _small_general_trainer()
    np.testing.assert_allclose(
        plain.score(curves), (np.log(0.01) / 2, (np.log(0.5) + np.log(0.01)) / 4)
    )
    floored = _small_general_trainer(log_ratio_floor=0.09)
    np.testing.assert_allclose(
        floored.score(curves),
        (
            (np.log(0.1) + np.log(1.09)) / 2,
            (np.log(0.59) + np.log(0.1) + 2 * np.log(1.09)) / 4,
        ),
    )


def _small_general_trainer(**overrides):
    mixture = problems.Mixture([problems.Quadratic(dim=3), _Linear()], name="small")
    settings = dict(
        units=4,
        horizon=10,
        max_horizon=30,
        unroll=5,
        num_problems=2,
        validation_problems=2,
        objective="log_ratio",
        restart_probability=0.5,
        clipnorm=1.0,
        learning_rate=1e-2,
    )
    return meta.MetaTrainer(mixture, **{**settings, **overrides})


def test_resumed_meta_training_ends_as_an_uninterrupted_run(tmp_path):
    straight = _small_general_trainer()
    straight.fit(epochs=2, episodes_per_epoch=3, verbose=0)
    interrupted = _small_general_trainer()
    interrupted.fit(epochs=1, episodes_per_epoch=3, verbose=0, checkpoint_dir=tmp_path)
    resumed = _small_general_trainer()  # a new process: only the checkpoint carries over
    resumed.restore_checkpoint(tmp_path)
    assert resumed.epoch == 1
    history = resumed.fit(epochs=2, episodes_per_epoch=3, verbose=0, checkpoint_dir=tmp_path)
    assert len(history["meta_loss"]) == 2
    for key in ("meta_loss", "validation_final_loss"):
        np.testing.assert_allclose(history[key], straight.history[key], rtol=1e-5)
    for a, b in zip(resumed.phi, straight.phi):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-6)
    for a, b in zip(resumed.best_phi, straight.best_phi):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The meta-parameters moved: the comparison above is not of two no-ops.
    initial = _small_general_trainer()._phi_arrays()
    assert (
        max(np.abs(a - ops.convert_to_numpy(b)).max() for a, b in zip(initial, resumed.phi)) > 1e-3
    )
    with pytest.raises(ValueError, match="other settings \\(restart_probability\\)"):
        _small_general_trainer(restart_probability=0.2).restore_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="other settings \\(inputs\\)"):
        _small_general_trainer(inputs="moments").restore_checkpoint(tmp_path)
    # A checkpoint from before a setting existed resumes with its default.
    state = json.loads((tmp_path / meta.CHECKPOINT_STATE).read_text())
    del state["settings"]["inputs"]
    (tmp_path / meta.CHECKPOINT_STATE).write_text(json.dumps(state))
    _small_general_trainer().restore_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _small_general_trainer().restore_checkpoint(tmp_path / "nothing")


def test_a_registry_init_from_is_where_meta_training_starts():
    import dataclasses

    from kzoo.zoo import learned_optimizers
    from kzoo.zoo import registry

    entry = registry.entry("lstm_optimizer_digits_mlp")
    assert learned_optimizers.meta_trainer(entry).init_from is None
    started = learned_optimizers.meta_trainer(dataclasses.replace(entry, init_from=PRESET))
    for a, b in zip(started.phi, learned.load_meta_parameters(PRESET)[0]):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), b)


def test_meta_training_improves_the_optimizer(tmp_path):
    trainer = meta.MetaTrainer(
        problems.Quadratic(),
        preprocess=False,
        num_problems=16,
        validation_problems=32,
        learning_rate=3e-3,
    )
    untrained = trainer.run(
        [ops.convert_to_numpy(v) for v in trainer.phi], meta.VALIDATION_SEED, 32
    )
    history = trainer.fit(epochs=2, episodes_per_epoch=10, log_dir=tmp_path / "tb", verbose=0)
    trained = trainer.run(trainer.best_phi, meta.VALIDATION_SEED, 32)
    assert trained[-1].mean() < 0.5 * untrained[-1].mean()
    assert min(history["validation_final_loss"]) == pytest.approx(trained[-1].mean(), rel=1e-5)
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tb"))


def test_mixed_precision_fit_keeps_float32_state():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _digits_model()
        model.compile(
            optimizer=LSTMOptimizer(output_scale=0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x, y = _digits()
        history = model.fit(x, y, batch_size=128, epochs=2, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.all(np.isfinite(history.history["loss"]))
    optimizer = model.optimizer.inner_optimizer  # wrapped in a LossScaleOptimizer
    assert isinstance(optimizer, LSTMOptimizer)
    assert all(v.dtype == "float32" for v in optimizer.variables if len(v.shape))
    assert model.layers[0].kernel.dtype == "float32"


def _numpy_mlp(x, weights, activation):
    for i, (w, b) in enumerate(weights):
        x = x @ w + b
        if i < len(weights) - 1:
            x = activation(x)
    return x


def test_problem_families_match_a_numpy_forward_pass():
    rng = np.random.default_rng(0)
    elu = lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0)))  # noqa: E731
    for problem, activation in (
        (problems.MLP("wine", (5, 4), "elu", batch_size=7), elu),
        (problems.MLP("diabetes", (6,), "tanh", batch_size=7), np.tanh),
    ):
        params, constants = problem.sample(rng, 2)
        batch = {k: v[0] for k, v in problem.batches(rng, 2, 1).items()}
        got = ops.convert_to_numpy(problem.loss(params, constants, batch))
        for k in range(2):
            weights = list(zip(params[0::2], params[1::2]))
            out = _numpy_mlp(batch["x"][k], [(w[k], b[k]) for w, b in weights], activation)
            if problem.num_classes:  # cross-entropy
                log_p = out - np.log(np.exp(out).sum(-1, keepdims=True))
                expected = -log_p[np.arange(7), batch["y"][k]].mean()
            else:  # squared error on the standardized target
                expected = np.mean((out[:, 0] - batch["y"][k][:, 0]) ** 2)
            np.testing.assert_allclose(got[k], expected, rtol=1e-5)


def test_the_noisy_distribution_adds_families_whose_loss_keeps_a_floor():
    general = [m.name for m in problems.general_training_distribution().members]
    noisy = problems.noisy_training_distribution()
    names = [m.name for m in noisy.members]
    assert names[: len(general)] == general and len(names) == len(general) + 8
    assert not any(held_out in n for n in names for held_out in ("friedman", "texture", "diab"))
    x, clean, _ = problems.load_dataset("digits")
    x_noisy, labels, num_classes = problems.load_dataset("digits_noisy_labels")
    np.testing.assert_array_equal(x, x_noisy)
    # A fifth drawn at random among 10 classes: 18 % expected to change.
    assert num_classes == 10 and 0.15 < np.mean(labels != clean) < 0.21
    for name, shape, classes in (
        ("noisy_classification", (4000, 20), 6),
        ("hastie", (4000, 10), 2),
        ("moons", (2000, 2), 2),
        ("gaussian_quantiles", (3000, 6), 4),
        ("swiss_roll", (3000, 3), 0),
    ):
        x, y, num_classes = problems.load_dataset(name)
        assert x.shape == shape and num_classes == classes, name
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(x.std(0), 1, atol=1e-3)
        if classes:
            assert set(np.unique(y)) == set(range(classes)), name
    # The noise keeps a floor: the best linear fit of the roll's position
    # leaves a fifth of its variance (the roll is nonlinear and noisy).
    x, y, _ = problems.load_dataset("swiss_roll")
    residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    assert residual.var() > 0.2


def test_initialization_scales_and_training_horizons_are_drawn_in_range():
    problem = problems.MLP("digits", (32,), "relu", init_scale=(0.5, 2.0))
    params, _ = problem.sample(np.random.default_rng(0), 200)
    glorot = np.sqrt(2.0 / (64 + 32))
    ratio = params[0].std(axis=(1, 2)) / glorot
    assert 0.45 < ratio.min() < 0.6 and 1.7 < ratio.max() < 2.1
    fixed = problems.MLP("digits", (32,), "relu")  # one scale: the paper's stream of numbers
    a = fixed.sample(np.random.default_rng(0), 3)[0][0]
    np.testing.assert_allclose(
        a, glorot * np.random.default_rng(0).standard_normal(a.shape), rtol=1e-6
    )
    trainer = _small_general_trainer()
    horizons = {trainer._training_horizon() for _ in range(200)}
    assert horizons == {10, 15, 20, 25, 30}
    with pytest.raises(ValueError, match="max_horizon 12 is not a multiple of unroll 5"):
        _small_general_trainer(max_horizon=12)
    with pytest.raises(ValueError, match="objective must be one of"):
        _small_general_trainer(objective="mean")
    with pytest.raises(ValueError, match="a mixture of families needs objective='log_ratio'"):
        _small_general_trainer(objective="sum")


def test_a_reparametrized_family_is_the_same_problem_with_rescaled_gradients():
    inner = problems.MLP("wine", (16,), "tanh", 32)
    rescaled = problems.Reparametrized(inner, (0.1, 10.0))
    params, constants = rescaled.sample(np.random.default_rng(0), 50)
    original, _ = inner.sample(np.random.default_rng(0), 50)
    scales = [constants[f"rescaled_scale_{i}"] for i in range(len(params))]
    for p, o, c in zip(params, original, scales):
        assert c.shape == (50,) + (1,) * (p.ndim - 1)
        assert 0.1 <= c.min() < 0.2 and 5.0 < c.max() <= 10.0
        np.testing.assert_allclose(p * c, o, rtol=1e-6, atol=1e-7)
    assert not np.allclose(scales[0].ravel(), scales[2].ravel())  # one scale per tensor

    # Same losses, and the gradient in theta' is c times the one in theta.
    batch = {k: v[0] for k, v in inner.batches(np.random.default_rng(1), 50, 1).items()}
    results = []
    for ps, problem, consts in ((params, rescaled, constants), (original, inner, {})):
        consts = {k: ops.convert_to_tensor(v) for k, v in consts.items()}
        results.append(
            backend.value_and_stopped_gradient(
                lambda p: ops.sum(problem.loss(p, consts, batch)),
                [ops.convert_to_tensor(p) for p in ps],
            )
        )
    (value, grads), (expected_value, expected_grads) = results
    np.testing.assert_allclose(float(value), float(expected_value), rtol=1e-5)
    for g, expected, c in zip(grads, expected_grads, scales):
        np.testing.assert_allclose(
            ops.convert_to_numpy(g), c * ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-6
        )
    mixture = problems.rescaled_training_distribution()
    assert [m.name for m in mixture.members] == [
        f"{m.name}_rescaled" for m in problems.noisy_training_distribution().members
    ]
    with pytest.raises(ValueError, match="scale_range must be 0 < low <= high"):
        problems.Reparametrized(inner, (0.0, 1.0))
