"""Exports a `.keras` file as a SavedModel in a TensorFlow-backend process.

Started by `kzoo.serving.export` when the model lives in a JAX or PyTorch
process. Usage: KERAS_BACKEND=tensorflow python -m kzoo.serving._export_worker
MODEL.keras OUTPUT_DIR [OUTPUT_NAMES]  (comma-separated: what `serving_default`
returns; default all)
"""

import sys

import keras

import kzoo.applications  # noqa: F401  (registers kzoo's and keras-cv's models with Keras)
import kzoo.layers  # noqa: F401  (registers kzoo's serializable classes with Keras)
import kzoo.optimizers  # noqa: F401
from kzoo.serving.export import _write_saved_model

if __name__ == "__main__":
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("the export worker needs KERAS_BACKEND=tensorflow")
    model = keras.saving.load_model(sys.argv[1], compile=False, safe_mode=True)
    outputs = sys.argv[3].split(",") if len(sys.argv) > 3 else None
    _write_saved_model(model, sys.argv[2], outputs)
