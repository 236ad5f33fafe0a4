"""Runs the suite on `$KERAS_BACKEND` (TensorFlow by default)."""

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The user zoo (where `kzoo train` writes, searched before the shipped zoo) is
# a fresh directory: tests never see or write the developer's ~/.kzoo/zoo.
os.environ["KZOO_ZOO"] = tempfile.mkdtemp(prefix="kzoo-test-zoo-")
