"""A learned optimizer: the coordinatewise LSTM of Andrychowicz et al. (2016).

"Learning to learn by gradient descent by gradient descent" (equations:
`docs/equations.md` §S3). Each coordinate `i` of the optimizee's
parameters is updated by the same small recurrent network `m` with shared
meta-parameters `phi` and its own state:

    [g_t, h_{t+1}] = m(grad_t, h_t; phi)        theta_{t+1} = theta_t + g_t

`m` is a stack of LSTMs (two layers of 20 units in the paper) followed by a
linear map to one output, times an output scale. The gradient is optionally
preprocessed (the paper's appendix A, `p = 10`):

    grad -> (log|grad| / p, sign grad)   if |grad| >= exp(-p)
            (-1, exp(p) grad)            otherwise

Our extension, `inputs="moments"` (not in the paper; `docs/learned_optimizer_general.md`),
also keeps Adam's running moments per coordinate and feeds the network two
more inputs, Adam's direction `m_hat / (sqrt(v_hat) + eps_t)` and the
normalized gradient `grad / (sqrt(v_hat) + eps_t)` (`eps_t = eps / sqrt(1 -
beta_2^t)`, where `keras.optimizers.Adam` puts its epsilon). Its output layer sees
the inputs as well as the last LSTM layer and gives a direction `d` and a
log step size `s`:

    g_t = output_scale * d * exp(B tanh(s / B))        (B = LOG_SCALE_BOUND)

Its initial `phi` makes `d` Adam's direction and `s` zero, so an untrained
optimizer is Adam with `learning_rate=output_scale`; meta-training learns
the corrections.

This module holds the whole optimizer:

- `meta_parameter_shapes`, `initial_meta_parameters`, `preprocess_gradients`
  and the pure `step(phi, gradient, state)`, written with `keras.ops`; the
  meta-trainer (`kzoo.optimizers.meta`) differentiates this same function, so
  the optimizer that is meta-trained is exactly the one `fit` runs;
- `LSTMOptimizer`, a `keras.optimizers.Optimizer` that calls `step` once per
  train step on all of a model's parameters; `phi` comes from the zoo and
  is never changed by `fit`.
"""

import functools
import itertools
import json
import math
import os

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo import compat
from kzoo.zoo import presets

PHI_FILE = presets.WEIGHTS_FILES["optimizer"]


INPUTS = ("gradient", "moments")
MOMENT_DECAYS = (0.9, 0.999)  # Adam's beta_1, beta_2
EPSILON = 1e-7  # Keras' Adam epsilon
LOG_SCALE_BOUND = 5.0  # |log step-size factor| of inputs="moments" stays below this
MOMENTS = 4  # m, v and the two bias corrections 1 - beta^t


def _num_inputs(preprocess, inputs):
    return (2 if preprocess else 1) + (2 if inputs == "moments" else 0)


def meta_parameter_shapes(units=20, num_layers=2, preprocess=True, inputs="gradient"):
    """Names and shapes of the meta-parameters `phi`, in `step`'s order.

    Args:
        units: LSTM units per layer.
        num_layers: number of stacked LSTM layers.
        preprocess: whether gradients are preprocessed (2 inputs) or raw (1).
        inputs: `"gradient"` (the paper) or `"moments"` (two more inputs
            from Adam's moments; an output layer on `[h, inputs]` with two
            outputs, direction and log step size).

    Returns:
        A list of `(name, shape)`: per layer `kernel`, `recurrent_kernel`,
        `bias` (gates in Keras' order i, f, c, o), then the output `kernel`
        (`(units, 1)`; `(units + inputs, 2)` for `"moments"`) and `bias`.

    Example:

    >>> [s for _, s in meta_parameter_shapes(units=4, num_layers=1)]
    [(2, 16), (4, 16), (16,), (4, 1), (1,)]
    >>> [s for _, s in meta_parameter_shapes(units=4, num_layers=1, inputs="moments")]
    [(4, 16), (4, 16), (16,), (8, 2), (2,)]
    """
    shapes = []
    features = width = _num_inputs(preprocess, inputs)
    for layer in range(num_layers):
        shapes += [
            (f"lstm_{layer}/kernel", (width, 4 * units)),
            (f"lstm_{layer}/recurrent_kernel", (units, 4 * units)),
            (f"lstm_{layer}/bias", (4 * units,)),
        ]
        width = units
    if inputs == "moments":
        return shapes + [("output/kernel", (units + features, 2)), ("output/bias", (2,))]
    return shapes + [("output/kernel", (units, 1)), ("output/bias", (1,))]


def initial_meta_parameters(units=20, num_layers=2, preprocess=True, seed=0, inputs="gradient"):
    """A random `phi` to start meta-training from (numpy float32 arrays).

    Kernels are Glorot-uniform, recurrent kernels orthogonal, forget-gate
    biases 1, and the output layer small (std 0.01) so the first updates are
    small. For `inputs="moments"` the output layer is zero but for a `-1`
    from Adam's direction to `d`: the untrained optimizer is exactly Adam
    (see the module docstring), and meta-training moves it from there.
    """
    rng = np.random.default_rng(seed)
    phi = []
    for name, shape in meta_parameter_shapes(units, num_layers, preprocess, inputs):
        if name == "output/kernel":
            value = 0.01 * rng.standard_normal(shape)
            if inputs == "moments":
                value = np.zeros(shape)
                value[-2, 0] = -1.0  # d = -m_hat / (sqrt(v_hat) + eps)
        elif name.endswith("/recurrent_kernel"):
            q, r = np.linalg.qr(rng.standard_normal((shape[1], shape[0])))
            value = (q * np.sign(np.diag(r))).T
        elif name.endswith("/kernel"):
            limit = math.sqrt(6.0 / sum(shape))
            value = rng.uniform(-limit, limit, shape)
        else:
            value = np.zeros(shape)
            if name.startswith("lstm_"):
                value[units : 2 * units] = 1.0
        phi.append(value.astype("float32"))
    return phi


def preprocess_gradients(gradient, exponent=10.0):
    """The paper's gradient preprocessing, `(..., ) -> (..., 2)`.

    Magnitude and sign are separated for `|g| >= exp(-p)`:
    `(log|g| / p, sign g)`; smaller gradients map to `(-1, exp(p) g)`.

    Args:
        gradient: a float tensor.
        exponent: `p`.

    Returns:
        The preprocessed tensor with a last axis of 2.
    """
    magnitude = ops.abs(gradient)
    large = magnitude >= math.exp(-exponent)
    log_part = ops.log(ops.maximum(magnitude, math.exp(-exponent))) / exponent
    first = ops.where(large, log_part, -ops.ones_like(gradient))
    second = ops.where(large, ops.sign(gradient), math.exp(exponent) * gradient)
    return ops.stack([first, second], axis=-1)


def initial_state(shape, units=20, num_layers=2, dtype="float32", inputs="gradient"):
    """Zero state for coordinates of `shape`: `[h_0, c_0, h_1, c_1, ...]`,
    and for `inputs="moments"` a last float32 entry `(*shape, 4)` (`m`, `v`
    and their bias corrections `1 - beta^t`)."""
    state = [ops.zeros((*shape, units), dtype) for _ in range(2 * num_layers)]
    if inputs == "moments":
        state.append(ops.zeros((*shape, MOMENTS), "float32"))
    return state


def _moment_features(gradient, moments):
    """Adam's direction and the normalized gradient of flat `gradient`, and
    the updated `(n, 4)` moments."""
    (beta_1, beta_2), g = MOMENT_DECAYS, gradient
    m = beta_1 * moments[:, 0] + (1 - beta_1) * g
    v = beta_2 * moments[:, 1] + (1 - beta_2) * ops.square(g)
    correction_1 = beta_1 * moments[:, 2] + (1 - beta_1)
    correction_2 = beta_2 * moments[:, 3] + (1 - beta_2)
    scale = (ops.sqrt(v) + EPSILON) / ops.sqrt(correction_2)  # Keras' Adam, epsilon included
    features = ops.stack([m / correction_1 / scale, g / scale], axis=-1)
    return features, ops.stack([m, v, correction_1, correction_2], axis=-1)


def step(phi, gradient, state, output_scale=1.0, preprocess=True, exponent=10.0, inputs="gradient"):
    """One step of the learned optimizer, coordinatewise.

    Args:
        phi: the meta-parameters, a list ordered as in `meta_parameter_shapes`.
        gradient: the optimizee's gradient, any shape `S`.
        state: `[h_0, c_0, h_1, c_1, ...]`, each of shape `(*S, units)`,
            then for `inputs="moments"` the moments `(*S, 4)`.
        output_scale: the factor on the network's output.
        preprocess: apply `preprocess_gradients` (otherwise the raw gradient
            is the single input).
        exponent: `p` of the preprocessing.
        inputs: `"gradient"` or `"moments"` (see the module docstring).

    Returns:
        `(update, state)`: the update `g_t` of shape `S` (to be added to the
        parameters) and the new state.

    Example:

    >>> phi = initial_meta_parameters(units=4, num_layers=1)
    >>> g = ops.ones((3, 2))
    >>> update, state = step(phi, g, initial_state((3, 2), units=4, num_layers=1))
    >>> tuple(update.shape), tuple(state[0].shape)
    ((3, 2), (3, 2, 4))
    """
    shape = ops.shape(gradient)
    flat = ops.reshape(gradient, (-1,))
    x = preprocess_gradients(flat, exponent) if preprocess else flat[:, None]
    new_state = []
    if inputs == "moments":
        *state, moments = state
        features, moments = _moment_features(flat, ops.reshape(moments, (-1, MOMENTS)))
        x = features = ops.concatenate([x, features], axis=-1)  # the output layer sees them too
    for layer in range(len(state) // 2):
        kernel, recurrent, bias = phi[3 * layer : 3 * layer + 3]
        h, c = state[2 * layer], state[2 * layer + 1]
        units = ops.shape(h)[-1]
        h = ops.reshape(h, (-1, units))
        c = ops.reshape(c, (-1, units))
        # [x, h, 1] times [kernel; recurrent; bias]: the same arithmetic as
        # x @ kernel + h @ recurrent + bias, in fewer, larger ops.
        operand = ops.concatenate([x, h, ops.ones_like(h[:, :1])], axis=-1)
        weights = ops.concatenate([kernel, recurrent, bias[None]], axis=0)
        if backend.contiguous_gates():
            # One matmul per gate (i, f, c, o), each gate its own tensor.
            i, f, g, o = (ops.matmul(operand, w) for w in ops.split(weights, 4, axis=-1))
            c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
            h = ops.sigmoid(o) * ops.tanh(c)
        else:
            # One matmul, the gates reordered to (i, f, o, c): one sigmoid
            # over three gates and one tanh.
            z = ops.matmul(operand, _gates_ifoc(weights, units))
            gates = ops.sigmoid(z[:, : 3 * units])
            c = gates[:, units : 2 * units] * c + gates[:, :units] * ops.tanh(z[:, 3 * units :])
            h = gates[:, 2 * units :] * ops.tanh(c)
        new_state += [ops.reshape(h, (*shape, units)), ops.reshape(c, (*shape, units))]
        x = h
    out_kernel, out_bias = phi[-2:]
    if inputs == "moments":
        z = ops.matmul(ops.concatenate([x, features], axis=-1), out_kernel) + out_bias
        log_scale = LOG_SCALE_BOUND * ops.tanh(z[:, 1] / LOG_SCALE_BOUND)
        update = output_scale * z[:, 0] * ops.exp(log_scale)
        new_state.append(ops.reshape(moments, (*shape, MOMENTS)))
    else:
        update = output_scale * (ops.matmul(x, out_kernel) + out_bias)
    return ops.reshape(update, shape), new_state


def _gates_ifoc(value, units):
    """Columns of Keras' gate order (i, f, c, o) reordered to (i, f, o, c)."""
    return ops.concatenate(
        [value[..., : 2 * units], value[..., 3 * units :], value[..., 2 * units : 3 * units]],
        axis=-1,
    )


def check_meta_parameters(phi, units, num_layers, preprocess, source="phi", inputs="gradient"):
    """Raises `ValueError` unless `phi`'s shapes fit the architecture."""
    expected = meta_parameter_shapes(units, num_layers, preprocess, inputs)
    described = (
        f"units={units}, num_layers={num_layers}, preprocess={preprocess}, inputs={inputs!r}"
    )
    if len(phi) != len(expected):
        raise ValueError(
            f"LSTMOptimizer: {source} has {len(phi)} arrays; {described} needs "
            f"{len(expected)} ({', '.join(n for n, _ in expected)})."
        )
    for value, (name, shape) in zip(phi, expected):
        if tuple(np.shape(value)) != shape:
            raise ValueError(
                f"LSTMOptimizer: meta-parameter {name!r} of {source} has shape "
                f"{tuple(np.shape(value))}, but {described} needs {shape}."
            )


def _network(architecture):
    """The arguments of `meta_parameter_shapes` in an architecture dict."""
    return (
        architecture["units"],
        architecture["num_layers"],
        architecture["preprocess"],
        architecture["inputs"],
    )


def save_meta_parameters(directory, phi, architecture, metadata, overwrite=False):
    """Writes a learned optimizer to the zoo as a preset directory.

    The preset holds `config.json` (the architecture: `units`, `num_layers`,
    `preprocess`, `exponent`, `output_scale`, `inputs`), `optimizer.weights.npz`
    (phi) and `metadata.json` (its sha256, the meta-training command and
    metrics).
    """
    units, num_layers, preprocess, inputs = _network(architecture)
    check_meta_parameters(phi, units, num_layers, preprocess, inputs=inputs)
    names = [n for n, _ in meta_parameter_shapes(units, num_layers, preprocess, inputs)]

    def write(tmp):
        (tmp / presets.CONFIG_FILE).write_text(json.dumps(architecture, indent=2))
        np.savez(tmp / PHI_FILE, **{n: np.asarray(v, "float32") for n, v in zip(names, phi)})
        return PHI_FILE

    return presets.write_preset(
        directory, write, {"kind": "optimizer", **metadata}, overwrite=overwrite
    )


ARCHITECTURE_KEYS = ("units", "num_layers", "preprocess", "exponent", "output_scale", "inputs")
# Presets written before `inputs` existed hold the paper's network.
OPTIONAL_ARCHITECTURE_KEYS = {"inputs": "gradient"}


def check_architecture(units, num_layers, preprocess, exponent, output_scale, inputs="gradient"):
    """Raises `ValueError` unless the arguments describe a valid optimizer network."""
    if inputs not in INPUTS:
        raise ValueError(f"LSTMOptimizer: inputs must be one of {INPUTS}; got {inputs!r}.")
    for name, value in (("units", units), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"LSTMOptimizer: {name} must be a positive int; got {value!r}.")
    if not isinstance(preprocess, (bool, np.bool_)):
        raise ValueError(f"LSTMOptimizer: preprocess must be True or False; got {preprocess!r}.")
    for name, value in (("exponent", exponent), ("output_scale", output_scale)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.floating))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"LSTMOptimizer: {name} must be a finite number > 0; got {value!r}.")


def load_meta_parameters(preset):
    """Reads a verified learned-optimizer preset: `(phi, architecture)`.

    The preset's `config.json` must hold exactly `ARCHITECTURE_KEYS` (`inputs`
    may be absent: presets from before it existed are `"gradient"`): a
    learning rate, clipping or any other optimizer argument recorded there
    is refused (`PresetError`), as is a missing or invalid key.
    """
    directory, _ = presets.read_metadata(preset, kind="optimizer")
    label = f"Preset {str(preset)!r} ({directory})"
    try:
        architecture = json.loads((directory / presets.CONFIG_FILE).read_text())
    except ValueError as e:
        raise presets.PresetError(f"{label}: unreadable {presets.CONFIG_FILE} ({e}).") from e
    if isinstance(architecture, dict):
        architecture = {**OPTIONAL_ARCHITECTURE_KEYS, **architecture}
    if not isinstance(architecture, dict) or set(architecture) != set(ARCHITECTURE_KEYS):
        keys = sorted(architecture) if isinstance(architecture, dict) else architecture
        raise presets.PresetError(
            f"{label}: {presets.CONFIG_FILE} must hold exactly {', '.join(ARCHITECTURE_KEYS)}; "
            f"got {keys}."
        )
    try:
        check_architecture(**architecture)
    except ValueError as e:
        raise presets.PresetError(f"{label}: {e}") from e
    units, num_layers, preprocess, inputs = _network(architecture)
    with np.load(directory / PHI_FILE, allow_pickle=False) as arrays:
        names = [n for n, _ in meta_parameter_shapes(units, num_layers, preprocess, inputs)]
        missing = [n for n in names if n not in arrays.files]
        if missing:
            raise presets.PresetError(
                f"Preset {str(directory)!r} lacks meta-parameters {', '.join(missing)}."
            )
        phi = [arrays[n] for n in names]
    try:
        check_meta_parameters(
            phi, units, num_layers, preprocess, source=f"preset {str(directory)!r}", inputs=inputs
        )
    except ValueError as e:
        raise presets.PresetError(str(e)) from e
    return phi, architecture


STATE_DTYPES = ("float32", "bfloat16")


@keras.saving.register_keras_serializable(package="kzoo")
class LSTMOptimizer(compat.BatchedUpdates, keras.optimizers.Optimizer):
    """The coordinatewise LSTM optimizer (Andrychowicz et al., 2016).

    Each parameter coordinate is updated by `learning_rate * m(grad, h; phi)`
    with the shared, learned network `m` (see `step`) and a per-coordinate
    LSTM state. All coordinates of all variables are one batch: each train
    step concatenates the gradients and runs a single `step` over them, so
    the cost is a few large matmuls whatever the number of variables. The
    state is `2 * num_layers` optimizer variables of shape
    `(num_parameters, units)` (`state_of(variable)` gives one variable's
    part), stored in `state_dtype`; the LSTM computes in float32 either way.
    With `inputs="moments"` a float32 `(num_parameters, 4)` variable holds
    Adam's moments as well.
    The state and `phi` are optimizer variables: they are checkpointed and
    saved with the model like Adam's moments. `phi` is never changed by
    `fit`; it is meta-trained by `kzoo.optimizers.meta`.

    On TensorFlow the LSTM step runs as one XLA cluster (`backend.fused`).
    On CPU, `kzoo.runtime.tune_cpu_allocator()`, called before Keras is
    imported, keeps the step's large temporaries allocated between steps;
    without it, JAX's step on an 85k-parameter model takes about twice as
    long (BENCHMARKS.md).

    A step whose gradient for a variable has a non-finite entry leaves that
    variable and its state unchanged and adds one to `skipped_updates`. A
    gradient of another shape than its variable is a `ValueError`.

    The first presets (`lstm_optimizer_quadratic`, `lstm_optimizer_digits_mlp`)
    were meta-trained from random initializations only. Do not fine-tune a
    pretrained model with them: their first steps are large. One epoch at
    the meta-trained step takes the zoo's `lnlstm_digits` from 0.967 to about
    0.6 test accuracy. Even `learning_rate=0.01` loses up to 1.5 points,
    where Adam at 1e-4 loses none. The general presets' meta-training also
    restarts their state on half-trained problems. At `learning_rate=0.01`,
    each of the six general presets keeps the model's accuracy on every
    backend (BENCHMARKS.md).

    Args:
        weights: where `phi` comes from: a zoo preset name or directory, or a
            list of arrays ordered as in `meta_parameter_shapes`; `None` for a
            random (untrained) `phi` drawn with `seed`.
        units: LSTM units per layer (must match `weights`).
        num_layers: number of LSTM layers (must match `weights`).
        preprocess: preprocess the gradients (must match `weights`).
        exponent: `p` of the gradient preprocessing.
        inputs: `"gradient"` (the paper's network) or `"moments"` (our
            extension: Adam's moments as two more inputs, a learned step
            size; must match `weights`).
        output_scale: factor on the network's output.
        learning_rate: an extra factor on the learned update (1 reproduces the
            meta-trained optimizer); a float or a schedule.
        seed: seed of the random `phi` when `weights` is `None`.
        state_dtype: `"float32"` (default), or `"bfloat16"` to halve the
            optimizer's memory (`2 * num_layers * units` numbers per
            parameter: 320 bytes in float32, 160 in bfloat16, for the zoo's
            two 20-unit layers). The state is rounded to bfloat16 after each
            step; BENCHMARKS.md measures what that costs in loss. Adam's
            moments (`inputs="moments"`) stay float32: an average with
            decay 0.999 does not move in bfloat16.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`,
            `name`, ...).

    Use `from_preset` to take the architecture from a preset. `get_config`
    carries `phi` itself, so a `.keras` file of a model compiled with this
    optimizer loads without the preset. Every invalid argument is a
    `ValueError` naming it.

    Example:

    >>> optimizer = LSTMOptimizer.from_preset("lstm_optimizer_digits_mlp")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile(optimizer=optimizer, loss="mse")
    >>> model.fit(np.ones((8, 4)), np.zeros((8, 3)), epochs=1, verbose=0).history["loss"][0] > 0
    True
    >>> [tuple(s.shape) for s in optimizer.state_of(model.layers[0].kernel)][0]
    (4, 3, 20)
    """

    def __init__(
        self,
        weights=None,
        units=20,
        num_layers=2,
        preprocess=True,
        exponent=10.0,
        output_scale=1.0,
        learning_rate=1.0,
        seed=0,
        state_dtype="float32",
        inputs="gradient",
        name="lstm_optimizer",
        **kwargs,
    ):
        check_architecture(units, num_layers, preprocess, exponent, output_scale, inputs)
        if not callable(learning_rate) and not isinstance(learning_rate, (int, float)):
            raise ValueError(
                f"LSTMOptimizer: learning_rate must be a number or a schedule; "
                f"got {learning_rate!r}."
            )
        if isinstance(learning_rate, (int, float)) and not (
            math.isfinite(learning_rate) and learning_rate > 0
        ):
            raise ValueError(
                f"LSTMOptimizer: learning_rate must be a finite number > 0; got {learning_rate!r}."
            )
        if state_dtype not in STATE_DTYPES:
            raise ValueError(
                f"LSTMOptimizer: state_dtype must be one of {', '.join(STATE_DTYPES)}; "
                f"got {state_dtype!r}."
            )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.units, self.num_layers = int(units), int(num_layers)
        self.preprocess, self.exponent = bool(preprocess), float(exponent)
        self.output_scale, self.seed = float(output_scale), seed
        self.state_dtype, self.inputs = state_dtype, inputs
        if weights is None:
            phi = initial_meta_parameters(
                self.units, self.num_layers, self.preprocess, seed, self.inputs
            )
        elif isinstance(weights, (str, os.PathLike)):
            phi, _ = load_meta_parameters(weights)
        elif isinstance(weights, (list, tuple)):
            try:
                phi = [np.asarray(v, "float32") for v in weights]
            except (TypeError, ValueError) as e:
                raise ValueError(f"LSTMOptimizer: weights must be arrays; {e}") from e
        else:
            raise ValueError(
                "LSTMOptimizer: weights must be None, a preset name or directory, or a list "
                f"of arrays ordered as in meta_parameter_shapes(); got {type(weights).__name__}."
            )
        check_meta_parameters(
            phi,
            self.units,
            self.num_layers,
            self.preprocess,
            source=repr(str(weights)) if isinstance(weights, (str, os.PathLike)) else "weights",
            inputs=self.inputs,
        )
        if not all(np.all(np.isfinite(v)) for v in phi):
            raise ValueError("LSTMOptimizer: the meta-parameters phi have non-finite entries.")
        self._initial_phi = phi

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """An `LSTMOptimizer` with `phi` and architecture from a zoo preset.

        Args:
            preset: a preset name (see `kzoo.zoo.list_entries(kind="optimizer")`) or
                directory.
            **kwargs: other constructor arguments (`learning_rate`,
                `state_dtype`, ...).
        """
        _, architecture = load_meta_parameters(preset)
        return cls(weights=str(preset), **{**architecture, **kwargs})

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        shapes = meta_parameter_shapes(self.units, self.num_layers, self.preprocess, self.inputs)
        self.meta_parameters = [
            self.add_variable(
                shape,
                initializer=_constant(value),
                dtype="float32",
                name=f"phi_{n.replace('/', '_')}",
            )
            for (n, shape), value in zip(shapes, self._initial_phi)
        ]
        self.skipped_updates = self.add_variable((), dtype="float32", name="skipped_updates")
        self._step = backend.fused(
            functools.partial(
                step,
                output_scale=self.output_scale,
                preprocess=self.preprocess,
                exponent=self.exponent,
                inputs=self.inputs,
            )
        )
        # Where each variable's coordinates sit in the flat state.
        self._shapes = [tuple(v.shape) for v in var_list]
        self._offsets = [0, *itertools.accumulate(math.prod(s) for s in self._shapes)]
        self.lstm_state = [
            self.add_variable(
                (self._offsets[-1], self.units),
                dtype=self.state_dtype,
                name=f"lstm{k // 2}_{'hc'[k % 2]}",
            )
            for k in range(2 * self.num_layers)
        ]
        if self.inputs == "moments":
            self.lstm_state.append(
                self.add_variable((self._offsets[-1], MOMENTS), dtype="float32", name="moments")
            )

    def state_of(self, variable):
        """`[h_0, c_0, h_1, c_1, ...]` of `variable`, each `(*variable.shape, units)`,
        then for `inputs="moments"` its moments `(*variable.shape, 4)`."""
        k = self.variable_index(variable)
        start, stop = self._offsets[k], self._offsets[k + 1]
        return [
            ops.reshape(s[start:stop], (*self._shapes[k], s.shape[-1])) for s in self.lstm_state
        ]

    def update_step(self, gradient, variable, learning_rate):
        self._update([gradient], [variable], learning_rate)

    def batched_update_step(self, grads, trainable_variables, learning_rate):
        if backend.updates_per_variable():
            self.per_variable_update_step(grads, trainable_variables, learning_rate)
        else:
            self._update(grads, trainable_variables, learning_rate)

    def _update(self, grads, variables, learning_rate):
        """One `step` over the concatenated coordinates of `variables`."""
        for gradient, variable in zip(grads, variables):
            if tuple(gradient.shape) != tuple(variable.shape):
                raise ValueError(
                    f"LSTMOptimizer: the gradient of variable "
                    f"{getattr(variable, 'path', variable.name)!r} has shape "
                    f"{tuple(gradient.shape)}; the variable has shape {tuple(variable.shape)}."
                )
        chosen = [self.variable_index(v) for v in variables]
        spans = [(self._offsets[k], self._offsets[k + 1]) for k in chosen]
        flat = [ops.reshape(ops.cast(g, "float32"), (-1,)) for g in grads]
        finite = [ops.all(ops.isfinite(g)) for g in flat]
        flat = ops.concatenate(flat) if len(flat) > 1 else flat[0]
        flat = ops.where(ops.isfinite(flat), flat, ops.zeros_like(flat))
        # Per coordinate: does its variable's gradient hold only finite values?
        keep = ops.concatenate(
            [ops.broadcast_to(f, (stop - start,)) for f, (start, stop) in zip(finite, spans)]
        )
        everything = chosen == list(range(len(self._shapes)))
        stored = [ops.convert_to_tensor(s) for s in self.lstm_state]
        old = [s if everything else _gather(s, spans) for s in stored]
        update, state = self._step(
            [ops.convert_to_tensor(p) for p in self.meta_parameters],
            flat,
            [ops.cast(s, "float32") for s in old],
        )
        state = [ops.cast(s, v.dtype) for s, v in zip(state, self.lstm_state)]
        all_finite = ops.all(ops.stack(finite))
        state = ops.cond(  # the masking pass only when a gradient is not finite
            all_finite,
            lambda: state,
            lambda: [ops.where(keep[:, None], s, before) for s, before in zip(state, old)],
        )
        for variable, new, previous in zip(self.lstm_state, state, stored):
            self.assign(variable, new if everything else _scatter(previous, new, spans))
        update = ops.where(keep, ops.cast(learning_rate, "float32") * update, 0.0)
        position = 0
        for variable, (start, stop) in zip(variables, spans):
            piece = update[position : position + stop - start]
            self.assign_add(variable, ops.cast(ops.reshape(piece, variable.shape), variable.dtype))
            position += stop - start
        skipped = ops.sum(1.0 - ops.cast(ops.stack(finite), "float32"))
        self.assign_add(self.skipped_updates, skipped)

    def get_config(self):
        config = super().get_config()
        # phi itself, as nested lists (float32 round-trips exactly through
        # JSON): a saved model loads without the preset it came from.
        phi = (
            [ops.convert_to_numpy(p) for p in self.meta_parameters]
            if self.built
            else self._initial_phi
        )
        config.update(
            {
                "weights": [np.asarray(p, "float32").tolist() for p in phi],
                "units": self.units,
                "num_layers": self.num_layers,
                "preprocess": self.preprocess,
                "exponent": self.exponent,
                "output_scale": self.output_scale,
                "seed": self.seed,
                "state_dtype": self.state_dtype,
                "inputs": self.inputs,
            }
        )
        return config


def _gather(flat, spans):
    """The rows of `flat` in `spans`, concatenated."""
    return ops.concatenate([flat[start:stop] for start, stop in spans])


def _scatter(flat, rows, spans):
    """`flat` with the rows in `spans` replaced by `rows` (as `_gather` took them)."""
    starts = [0]
    for start, stop in spans:
        starts.append(starts[-1] + stop - start)
    pieces, cursor = [], 0
    for (start, stop), at in sorted(zip(spans, starts)):
        if start > cursor:
            pieces.append(flat[cursor:start])
        pieces.append(rows[at : at + stop - start])
        cursor = stop
    if cursor < flat.shape[0]:
        pieces.append(flat[cursor:])
    return ops.concatenate(pieces)


def _constant(value):
    def initializer(shape, dtype=None):
        return ops.convert_to_tensor(np.reshape(value, shape), dtype=dtype)

    return initializer
