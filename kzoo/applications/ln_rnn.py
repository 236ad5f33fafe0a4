"""Models of the layer-normalized RNN family and their plain-LSTM twins.

- `LNLSTMClassifier` / `LSTMClassifier`: a sequence classifier, here on
  scikit-learn's 8x8 digits read row by row (8 steps of 8 pixels).
- `LNLSTMCharLM` / `LSTMCharLM`: a character-level language model, here over
  the Python standard library's source text.
"""

import keras

from kzoo.datasets import stdlib_text
from kzoo.layers import LayerNormLSTM
from kzoo.zoo.models import preset_builder


def _recurrent_layer(layer_norm, units, return_sequences):
    if layer_norm:
        return LayerNormLSTM(units, return_sequences=return_sequences, name="ln_lstm")
    return keras.layers.LSTM(units, return_sequences=return_sequences, name="lstm")


def _classifier(layer_norm, units, sequence_length, features, num_classes, name):
    inputs = keras.Input((sequence_length, features), name="pixel_rows")
    x = _recurrent_layer(layer_norm, units, return_sequences=False)(inputs)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="class_probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def _char_lm(layer_norm, units, embedding_dim, vocab_size, name):
    inputs = keras.Input((None,), dtype="int32", name="char_ids")
    x = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")(inputs)
    x = _recurrent_layer(layer_norm, units, return_sequences=True)(x)
    outputs = keras.layers.Dense(
        vocab_size,
        activation="softmax",
        dtype="float32",
        name="next_char_probabilities",
    )(x)
    return keras.Model(inputs, outputs, name=name)


@preset_builder()
def LNLSTMClassifier(
    units=64, sequence_length=8, features=8, num_classes=10, name="lnlstm_classifier"
):
    """Sequence classifier: one `LayerNormLSTM` and a softmax layer.

    Args:
        units: LSTM units.
        sequence_length: time steps per example (`None` for variable length).
        features: features per time step.
        num_classes: number of classes.
        weights: `None`, a preset name or a preset directory.
        name: model name (also the serving model name).

    Input `pixel_rows` `(batch, sequence_length, features)` float32; output
    `class_probabilities` `(batch, num_classes)`.

    Example:

    >>> model = LNLSTMClassifier(units=32)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    """
    return _classifier(True, units, sequence_length, features, num_classes, name)


@preset_builder()
def LSTMClassifier(units=64, sequence_length=8, features=8, num_classes=10, name="lstm_classifier"):
    """Plain `keras.layers.LSTM` twin of `LNLSTMClassifier` (same arguments)."""
    return _classifier(False, units, sequence_length, features, num_classes, name)


@preset_builder()
def LNLSTMCharLM(
    units=256,
    embedding_dim=32,
    vocab_size=stdlib_text.VOCAB_SIZE,
    name="lnlstm_char_lm",
):
    """Character language model: embedding, `LayerNormLSTM`, softmax per step.

    Args:
        units: LSTM units.
        embedding_dim: character embedding size.
        vocab_size: number of character ids.
        weights: `None`, a preset name or a preset directory.
        name: model name (also the serving model name).

    Input `char_ids` `(batch, time)` int32; output `next_char_probabilities`
    `(batch, time, vocab_size)`.

    Example:

    >>> model = LNLSTMCharLM(units=64)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    """
    return _char_lm(True, units, embedding_dim, vocab_size, name)


@preset_builder()
def LSTMCharLM(
    units=256,
    embedding_dim=32,
    vocab_size=stdlib_text.VOCAB_SIZE,
    name="lstm_char_lm",
):
    """Plain `keras.layers.LSTM` twin of `LNLSTMCharLM` (same arguments)."""
    return _char_lm(False, units, embedding_dim, vocab_size, name)
