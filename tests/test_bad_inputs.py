"""Property-based bad inputs for every public layer and `LSTMOptimizer`.

For each layer (`tests/bad_inputs.SPECS`) and each bad input (wrong rank,
wrong last dimension after build, NaN, inf, 1e20, an empty batch, a
zero-size axis, float16/bfloat16/int32, and the layer's own contract
violations), hypothesis draws the batch size, which example is bad and where
the bad value sits. The layer must answer with a clear `ValueError` naming
it, non-finite output for the bad example, or (for inputs its contract
accepts) a finite answer: never a cryptic error and never a plausible
answer to an input it cannot honour. Value contracts are also checked inside
a compiled `predict`. `benchmarks/reliability.py` counts the same outcomes.
"""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests import bad_inputs

pytestmark = pytest.mark.multibackend

_LAYERS = {}


def _layer(name):
    """One built layer per name and backend: the cases reuse it (cheap)."""
    if name not in _LAYERS:
        _LAYERS[name] = bad_inputs.built_layer(name)
    return _LAYERS[name]


_PROFILE = settings(
    max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize(
    "name, case",
    [(name, case) for name in sorted(bad_inputs.SPECS) for case in bad_inputs.cases(name)],
)
@_PROFILE
@given(data=st.data())
def test_bad_inputs_get_a_clear_error_or_a_visible_nan(name, case, data):
    batch = data.draw(st.integers(1, 3), label="batch")
    example = data.draw(st.integers(0, batch - 1), label="example")
    position = data.draw(st.floats(0.0, 1.0), label="position")
    magnitude = data.draw(st.sampled_from([1e20, -1e20, 3e38]), label="magnitude")
    inputs = bad_inputs.corrupt(
        name,
        case,
        np.random.default_rng(example),
        batch=batch,
        example=example,
        position=position,
        magnitude=magnitude,
    )
    layer = _layer(name)
    outcome = bad_inputs.judge(layer, case, lambda: layer(inputs), example=example)
    assert outcome in bad_inputs.GOOD, (name, case, outcome)


@pytest.mark.parametrize(
    "name, case",
    [
        (name, case)
        for name in sorted(bad_inputs.SPECS)
        for case in ("nan",) + bad_inputs.SPECS[name].extra_cases
    ],
)
def test_value_contracts_hold_in_compiled_predict(name, case):
    layer = bad_inputs.built_layer(name)
    inputs = bad_inputs.corrupt(name, case, np.random.default_rng(0), batch=2, example=1)
    outcome = bad_inputs.judge(
        layer, case, lambda: bad_inputs.compiled_predict(layer, inputs), example=1
    )
    assert outcome in bad_inputs.GOOD, outcome
    if outcome == "propagated":  # the good example of the batch is untouched
        clean = bad_inputs.SPECS[name].inputs(np.random.default_rng(0), 2)
        expected = bad_inputs._example_outputs(layer(clean), 0)
        got = bad_inputs._example_outputs(bad_inputs.compiled_predict(layer, inputs), 0)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", bad_inputs.OPTIMIZER_CASES)
def test_optimizer_bad_gradients(case):
    assert bad_inputs.judge_optimizer(case) in bad_inputs.GOOD


def test_check_values_false_skips_the_host_check_but_still_poisons():
    from kzoo import layers

    matrices = bad_inputs.corrupt("LogEig", "asymmetric", np.random.default_rng(0), example=1)
    with pytest.raises(ValueError, match=r"'log_eig\w*' \(LogEig\) expects finite, symmetric"):
        layers.LogEig()(matrices)
    out = keras.ops.convert_to_numpy(layers.LogEig(check_values=False)(matrices))
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[[0, 2]]))
