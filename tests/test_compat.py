"""The Keras internals in `kzoo.compat` still exist and still do what kzoo needs.

If a Keras release moves or changes one, this test names it; `kzoo.compat`
is the one place to adapt.
"""

import re
from pathlib import Path

import keras
import pytest

pytestmark = pytest.mark.multibackend


def test_the_keras_internals_kzoo_uses_are_there():
    try:
        from kzoo import compat
    except ImportError as e:  # pragma: no cover - only when Keras moved them
        pytest.fail(f"Keras {keras.__version__} moved an internal kzoo.compat imports: {e}")
    cell = type("Cell", (keras.layers.Layer, compat.DropoutRNNCell), {})()
    for method in ("get_dropout_mask", "get_recurrent_dropout_mask", "reset_dropout_mask"):
        assert callable(getattr(cell, method, None)), f"DropoutRNNCell lost {method}"
    inner = keras.layers.Dense(2)
    model = keras.Sequential([keras.Input((3,)), keras.Sequential([inner])])
    assert inner in compat.flatten_layers(model), "Layer._flatten_layers changed"
    sequences = keras.ops.ones((2, 3, 1))
    last, outputs, states = compat.rnn(
        lambda x, states: (x + states[0], [x + states[0]]), sequences, [keras.ops.zeros((2, 1))]
    )
    assert keras.ops.convert_to_numpy(outputs)[:, :, 0].tolist() == [[1, 2, 3]] * 2, (
        "the backend rnn loop changed"
    )
    harness = getattr(compat.TestCase, "run_layer_test", None)
    assert callable(harness), "Keras' TestCase lost run_layer_test"


def test_object_sharing_scope_keeps_a_shared_object_shared():
    from kzoo import compat
    from kzoo import layers

    basis = layers.FilterBasis(4)
    inputs = keras.Input((8, 8, 3))
    x = layers.SharedBasisConv2D(3, basis)(inputs)
    model = keras.Model(inputs, layers.SharedBasisConv2D(3, basis)(x))
    with compat.ObjectSharingScope():
        config = keras.saving.serialize_keras_object(model)
    with compat.ObjectSharingScope():
        restored = keras.saving.deserialize_keras_object(config)
    convs = [layer for layer in restored.layers if isinstance(layer, layers.SharedBasisConv2D)]
    assert convs[0].basis is convs[1].basis, "ObjectSharingScope no longer shares objects"


def test_only_kzoo_compat_imports_keras_internals():
    root = Path(__file__).resolve().parent.parent
    sources = [*root.glob("kzoo/**/*.py"), *root.glob("tests/*.py"), *root.glob("benchmarks/*.py")]
    internal = re.compile(r"^\s*(from|import)\s+keras\.src\b", re.M)
    offenders = [
        str(p.relative_to(root))
        for p in sources
        if p != root / "kzoo" / "compat.py" and internal.search(p.read_text())
    ]
    assert offenders == [], f"import keras.src through kzoo.compat only: {offenders}"


def test_batched_updates_receive_every_gradient_of_a_step_at_once():
    from kzoo import compat

    calls = []

    class Recording(compat.BatchedUpdates, keras.optimizers.SGD):
        def batched_update_step(self, grads, variables, learning_rate):
            calls.append([tuple(v.shape) for v in variables])
            self.per_variable_update_step(grads, variables, learning_rate)

    a, b = keras.Variable(keras.ops.ones((2,))), keras.Variable(keras.ops.ones((3, 1)))
    optimizer = Recording(0.25)
    optimizer.apply([keras.ops.ones((2,)), keras.ops.ones((3, 1))], [a, b])
    assert calls == [[(2,), (3, 1)]], "Optimizer.apply no longer calls _backend_update_step once"
    assert keras.ops.convert_to_numpy(b).tolist() == [[0.75]] * 3, "the per-variable path changed"
    assert optimizer.variable_index(b) == 1, "Optimizer._get_variable_index changed"
