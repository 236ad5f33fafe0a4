"""What the zoo's learned optimizers do to a pretrained zoo model when fine-tuning.

Loads `lnlstm_digits` (test accuracy 0.967), recompiles it with each
optimizer and fits one epoch on the digits' training split (batch 32, the
model's own training batch), then scores the test split. The learned
optimizer runs at its meta-trained step (`learning_rate=1`) and scaled down
(`learning_rate` 0.1, 0.01); Adam at a standard fine-tuning rate (1e-4) is the
reference.

    KERAS_BACKEND=jax python benchmarks/learned_optimizer_finetune.py

Merges its numbers into `benchmarks/results/learned_optimizer_finetune.json`.
"""

import json
from pathlib import Path

import keras

from kzoo import applications
from kzoo.datasets import digits
from kzoo.optimizers import LSTMOptimizer

RESULTS = Path(__file__).parent / "results"
PRESET = "lstm_optimizer_digits_mlp"
OPTIMIZERS = {
    "Adam 1e-4": lambda: keras.optimizers.Adam(1e-4),
    "LSTMOptimizer": lambda: LSTMOptimizer.from_preset(PRESET),
    "LSTMOptimizer lr 0.1": lambda: LSTMOptimizer.from_preset(PRESET, learning_rate=0.1),
    "LSTMOptimizer lr 0.01": lambda: LSTMOptimizer.from_preset(PRESET, learning_rate=0.01),
}


def main():
    x, y = digits.load("train")
    x_test, y_test = digits.load("test")
    backend = keras.backend.backend()
    row = {}
    for name, make in OPTIMIZERS.items():
        keras.utils.set_random_seed(0)
        model = applications.LNLSTMClassifier.from_preset("lnlstm_digits")
        before = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
        model.compile(optimizer=make(), loss=model.loss, metrics=["accuracy"])
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        after = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
        row[name] = {"test_accuracy_before": before, "test_accuracy_after": after}
        print(f"{backend} {name}: test accuracy {before:.3f} -> {after:.3f}", flush=True)
    out = RESULTS / "learned_optimizer_finetune.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results[backend] = row
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
