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
- `TestCase`: Keras' own layer-test harness (`run_layer_test`: build,
  shapes, serialization, training, mixed precision), which kzoo's tests run
  every layer through. Imported on first use: the library never needs it.
"""

from keras.src.backend import rnn
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell
from keras.src.saving.serialization_lib import ObjectSharingScope

__all__ = ["DropoutRNNCell", "ObjectSharingScope", "flatten_layers", "rnn"]  # and TestCase, lazily


def flatten_layers(model):
    """Every layer of `model`, itself and nested layers included."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def __getattr__(name):
    if name == "TestCase":
        from keras.src.testing import TestCase

        return TestCase
    raise AttributeError(f"module 'kzoo.compat' has no attribute {name!r}")
