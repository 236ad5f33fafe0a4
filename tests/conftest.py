"""Runs the suite on `$KERAS_BACKEND` (TensorFlow by default)."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
