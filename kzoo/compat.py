"""The Keras internals kzoo relies on, in one place.

Keras has no public API for these; each is used for a reason given below,
and `tests/test_compat.py` fails with a clear message when a Keras release
moves or changes one of them. Nothing else in kzoo imports `keras.src`.

- `DropoutRNNCell`: the mixin that gives an RNN cell Keras' own dropout and
  recurrent-dropout masks (one mask per sequence, as `keras.layers.LSTMCell`
  uses); the layer-normalized cells subclass it.
- `rnn`: the backend's recurrent loop (`keras.layers.RNN.inner_loop` runs
  it: masking, `go_backwards`, `unroll`, `lax.scan` on JAX); the
  layer-normalized sequence layers run it over inputs they have already
  projected for every time step at once.
- `ObjectSharingScope`: inside it, Keras' (de)serialization records an object
  used by several layers once and restores it shared, as the `.keras` format
  does; presets use it so a `FilterBasis` stays shared.
- `flatten_layers(model)`: every layer of a model, nested ones included
  (`Layer._flatten_layers`), to find the batch-normalization layers to
  synchronize under `tf.distribute`.
- `BatchedUpdates`: a mixin for a `keras.optimizers.Optimizer` that takes
  every gradient of a train step at once. Keras' `apply` calls the
  optimizer's `_backend_update_step(grads, variables, learning_rate)` once
  per step, after loss-scale removal, clipping, weight decay and gradient
  accumulation (its default loops `update_step`; Keras' own Nadam
  overrides it too); the mixin routes that call to the optimizer's
  `batched_update_step`, so `LSTMOptimizer` runs one LSTM step over all
  parameters, and gives `variable_index(variable)` (the optimizer's
  `_get_variable_index`).
- `TestCase`: Keras' own layer-test harness (`run_layer_test`: build,
  shapes, serialization, training, mixed precision), which kzoo's tests run
  every layer through. Imported on first use: the library never needs it.
"""

from keras.src.backend import rnn
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell
from keras.src.saving.serialization_lib import ObjectSharingScope

__all__ = [  # and TestCase, lazily
    "BatchedUpdates",
    "DropoutRNNCell",
    "ObjectSharingScope",
    "flatten_layers",
    "rnn",
]


class BatchedUpdates:
    """Mixin: Keras hands the optimizer all gradients of a step at once.

    A subclass of `keras.optimizers.Optimizer` listing this mixin first
    defines `batched_update_step(grads, variables, learning_rate)`; Keras'
    `apply` (in `fit`, `apply_gradients` and `stateless_apply`) calls it once
    per step with the gradients of every variable that has one, in the
    optimizer's order. On TensorFlow, the backend's own override (all-reduce
    and per-replica updates under `tf.distribute`) is still reachable as
    `per_variable_update_step`.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self.batched_update_step(list(grads), list(trainable_variables), learning_rate)

    def per_variable_update_step(self, grads, trainable_variables, learning_rate):
        """Keras' default: `update_step` per variable (the backend's way)."""
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def variable_index(self, variable):
        """The position of `variable` in the list the optimizer was built on."""
        return self._get_variable_index(variable)


def flatten_layers(model):
    """Every layer of `model`, itself and nested layers included."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def __getattr__(name):
    if name == "TestCase":
        from keras.src.testing import TestCase

        return TestCase
    raise AttributeError(f"module 'kzoo.compat' has no attribute {name!r}")
