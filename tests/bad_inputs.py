"""Bad inputs for every public kzoo layer, and how to judge what a layer did.

Shared by `tests/test_bad_inputs.py` (hypothesis draws the details) and
`benchmarks/reliability.py` (counts the outcomes per layer and backend).

Outcomes:

- `clear_error`: a `ValueError` whose message names the layer (its name or
  class);
- `propagated`: the bad example's output is non-finite (NaN/inf reaches the
  loss); other examples are unaffected;
- `ok`: a finite, correct-shaped answer to an input the contract accepts
  (e.g. float16 or int inputs, an empty batch, 1e20, a documented clamp);
- `cryptic_error`: any other exception, or a `ValueError` that does not say
  which layer;
- `silent`: a plausible answer to an input the layer cannot honour (a
  finite output for a NaN example, a result for a wrong shape).

A layer meets its contract when it never gives `cryptic_error` or `silent`.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from kzoo import layers

GOOD = ("clear_error", "propagated", "ok")
BAD = ("cryptic_error", "silent")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A layer under test: how to make it, a valid input, its extra cases."""

    make: object  # () -> layer
    inputs: object  # (rng, batch) -> array or list of arrays (the first is corrupted)
    extra_cases: tuple = ()  # layer-specific contract violations
    clamps: tuple = ()  # extra cases the docstring documents as clamped, not refused


def _sequences(rng, batch):
    return rng.normal(size=(batch, 5, 3)).astype("float32")


def _images(rng, batch, channels=3):
    return rng.normal(size=(batch, 6, 6, channels)).astype("float32")


def _spd(rng, batch):
    a = rng.normal(size=(batch, 3, 6))
    return (a @ np.swapaxes(a, 1, 2) / 6 + 0.1 * np.eye(3)).astype("float32")


def _walk_inputs(rng, batch):
    return [
        rng.normal(size=(batch, 6, 6, 2)).astype("float32"),
        rng.uniform(0.1, 1.0, size=(batch, 6, 6, 5)).astype("float32"),
    ]


SPECS = {
    "LayerNormLSTM": Spec(lambda: layers.LayerNormLSTM(4), _sequences),
    "LayerNormGRU": Spec(lambda: layers.LayerNormGRU(4), _sequences),
    "LayerNormSimpleRNN": Spec(lambda: layers.LayerNormSimpleRNN(4), _sequences),
    "StableGRU": Spec(lambda: layers.StableGRU(4), _sequences),
    "PixelAffinity": Spec(lambda: layers.PixelAffinity(radius=1), _images),
    "RandomWalk": Spec(
        lambda: layers.RandomWalk(mode="converged", alpha=0.5),
        _walk_inputs,
        extra_cases=("negative_affinity",),
    ),
    "EMAttention": Spec(
        lambda: layers.EMAttention(num_bases=2, iterations=2), lambda rng, b: _images(rng, b, 4)
    ),
    "HighwayEM": Spec(
        lambda: layers.HighwayEM(num_bases=2, iterations=2), lambda rng, b: _images(rng, b, 4)
    ),
    "SecondOrderPooling": Spec(lambda: layers.SecondOrderPooling(), _images),
    "LogEig": Spec(
        lambda: layers.LogEig(), _spd, extra_cases=("asymmetric", "not_psd"), clamps=("not_psd",)
    ),
    "MatrixPower": Spec(
        lambda: layers.MatrixPower(0.5),
        _spd,
        extra_cases=("asymmetric", "not_psd"),
        clamps=("not_psd",),
    ),
    "MatrixSqrt(newton_schulz)": Spec(
        lambda: layers.MatrixSqrt(method="newton_schulz", iterations=8),
        _spd,
        extra_cases=("asymmetric", "not_psd"),
    ),
    "UpperTriangle": Spec(lambda: layers.UpperTriangle(), _spd, extra_cases=("asymmetric",)),
    "NormalizedCut": Spec(
        lambda: layers.NormalizedCut(2),
        lambda rng, b: rng.normal(size=(b, 3, 3, 2)).astype("float32"),
    ),
    "FilterBasis": Spec(lambda: layers.FilterBasis(4), _images),
    "SharedBasisConv2D": Spec(lambda: layers.SharedBasisConv2D(5, layers.FilterBasis(4)), _images),
    "FiniteBatchNormalization": Spec(
        lambda: layers.FiniteBatchNormalization(),
        lambda rng, b: rng.normal(size=(b, 6, 3)).astype("float32"),
    ),
}

CASES = (
    "wrong_rank",
    "wrong_last_dim",
    "nan",
    "inf",
    "huge",
    "empty_batch",
    "zero_size_axis",
    "float16",
    "bfloat16",
    "int32",
)


def cases(name):
    """Every case tried on the layer `name`."""
    return CASES + SPECS[name].extra_cases


def built_layer(name, seed=0):
    """The layer `name`, built and called once on a valid batch."""
    layer = SPECS[name].make()
    layer(SPECS[name].inputs(np.random.default_rng(seed), 2))
    return layer


def corrupt(name, case, rng, batch=3, example=0, position=0.5, magnitude=1e20):
    """The inputs of `case` for layer `name`; example `example` is the bad one.

    Args:
        name: a key of `SPECS`.
        case: one of `cases(name)`.
        rng: numpy generator for the valid part.
        batch: batch size.
        example: index of the corrupted example.
        position: where in that example the bad value goes, as a fraction.
        magnitude: the value of the `huge` case.
    """
    inputs = SPECS[name].inputs(rng, batch)
    multiple = isinstance(inputs, list)
    first = inputs[0] if multiple else inputs
    flat_index = int(position * (first[example].size - 1))

    def put(value, array=None):
        array = first.copy() if array is None else array
        view = array[example].reshape(-1)
        view[flat_index] = value
        array[example] = view.reshape(array[example].shape)
        return array

    if case == "wrong_rank":
        first = first[..., None]
    elif case == "wrong_last_dim":
        first = np.concatenate([first, first[..., :1]], axis=-1)
    elif case == "nan":
        first = put(np.nan)
    elif case == "inf":
        first = put(np.inf)
    elif case == "huge":
        first = put(magnitude)
    elif case == "empty_batch":
        inputs = [x[:0] for x in inputs] if multiple else first[:0]
        return inputs
    elif case == "zero_size_axis":
        first = first[:, :0]
    elif case in ("float16", "bfloat16"):
        first = ops.cast(first, case)
    elif case == "int32":
        first = np.round(first * 4).astype("int32")
    elif case == "asymmetric":
        first = first.copy()
        first[example, 0, 1] += 1.0
    elif case == "not_psd":
        first = first.copy()
        first[example] = np.diag([1.0, 0.5, -3.0])
    elif case == "negative_affinity":
        affinities = inputs[1].copy()
        affinities[example, 2, 2, 0] = -1.0
        return [inputs[0], affinities]
    else:
        raise ValueError(f"unknown case {case!r}")
    return [first, *inputs[1:]] if multiple else first


def _names_layer(error, layer):
    text = str(error)
    return layer.name in text or type(layer).__name__ in text


def _example_outputs(outputs, example):
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [
        np.asarray(ops.convert_to_numpy(ops.cast(o, "float32")))[example]
        for o in outputs
        if o is not None and len(o.shape) and o.shape[0] > example
    ]


def judge(layer, case, call, example=0):
    """Calls `call()` (the layer on a corrupted batch) and names the outcome."""
    try:
        outputs = call()
    except ValueError as error:
        return "clear_error" if _names_layer(error, layer) else "cryptic_error"
    except Exception:  # noqa: BLE001 - anything else is what we count as cryptic
        return "cryptic_error"
    if case in ("wrong_rank", "wrong_last_dim"):
        return "silent"
    values = _example_outputs(outputs, example)
    if case == "empty_batch" or case == "zero_size_axis" and not any(v.size for v in values):
        return "ok"
    finite = all(np.all(np.isfinite(v)) for v in values)
    if case in ("nan", "inf", "asymmetric", "negative_affinity", "zero_size_axis") or (
        case == "not_psd" and case not in SPECS[_spec_name(layer)].clamps
    ):
        return "silent" if finite else "propagated"
    # Valid inputs (other dtypes, 1e20, a documented clamp): an answer is expected.
    if case == "huge":
        return "ok"
    return "ok" if finite else "silent"


def _spec_name(layer):
    name = type(layer).__name__
    if name == "MatrixSqrt":
        return f"MatrixSqrt({layer.method})"
    return name


def compiled_predict(layer, inputs):
    """`layer` inside a functional model's `predict` (compiled on TF and JAX)."""
    multiple = isinstance(inputs, list)
    tensors = [
        keras.Input(x.shape[1:], dtype=str(x.dtype)) for x in (inputs if multiple else [inputs])
    ]
    model = keras.Model(tensors, layer(tensors if multiple else tensors[0]))
    return model.predict(inputs, verbose=0, batch_size=len(inputs[0] if multiple else inputs))


def judge_optimizer(case):
    """The outcome of one bad gradient or argument given to `LSTMOptimizer`."""
    from kzoo.optimizers import LSTMOptimizer

    variable = keras.Variable(np.ones((2, 3), "float32"), name="w")
    optimizer = LSTMOptimizer(units=4, num_layers=1)
    optimizer.build([variable])
    gradient = {
        "nan": np.full((2, 3), np.nan, "float32"),
        "inf": np.full((2, 3), np.inf, "float32"),
        "huge": np.full((2, 3), 1e20, "float32"),
        "wrong_shape": np.zeros((3, 2), "float32"),
        "float16": np.ones((2, 3), "float16"),
        "int32": np.ones((2, 3), "int32"),
    }[case]
    try:
        optimizer.apply([gradient], [variable])
    except ValueError as error:
        return "clear_error" if "LSTMOptimizer" in str(error) else "cryptic_error"
    except Exception:  # noqa: BLE001
        return "cryptic_error"
    value = ops.convert_to_numpy(variable)
    if case == "wrong_shape":
        return "silent"
    if not np.all(np.isfinite(value)):
        return "silent"  # a NaN step must be skipped, never stored
    if case in ("nan", "inf"):
        return "ok" if np.all(value == 1.0) else "silent"
    return "ok"


OPTIMIZER_CASES = ("nan", "inf", "huge", "wrong_shape", "float16", "int32")
