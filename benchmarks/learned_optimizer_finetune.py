"""What the zoo's learned optimizers do to a pretrained zoo model when fine-tuning.

Loads `lnlstm_digits` (test accuracy 0.967), recompiles it with each
optimizer and fits one epoch on the digits' training split (batch 32, the
model's own training batch), then scores the test split. The learned
optimizer runs at its meta-trained step (`learning_rate=1`) and scaled down
(`learning_rate` 0.1, 0.01); Adam at a standard fine-tuning rate (1e-4) is the
reference.

    KERAS_BACKEND=jax python benchmarks/learned_optimizer_finetune.py \
        --presets lstm_optimizer_digits_mlp lstm_optimizer_general

Merges its numbers into `benchmarks/results/learned_optimizer_finetune.json`.
"""

import argparse
import json
from pathlib import Path

import keras

from kzoo import applications
from kzoo.datasets import digits
from kzoo.optimizers import LSTMOptimizer

RESULTS = Path(__file__).parent / "results"


def optimizers(presets):
    """Adam 1e-4, then each preset at learning rates 1, 0.1 and 0.01. The
    digits preset keeps its earlier labels (`LSTMOptimizer`, ...)."""
    out = {"Adam 1e-4": lambda: keras.optimizers.Adam(1e-4)}
    for preset in presets:
        label = "LSTMOptimizer" if preset == "lstm_optimizer_digits_mlp" else preset
        for lr in (1.0, 0.1, 0.01):
            name = label if lr == 1.0 else f"{label} lr {lr:g}"
            out[name] = lambda p=preset, r=lr: LSTMOptimizer.from_preset(p, learning_rate=r)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=["lstm_optimizer_general"])
    args = parser.parse_args()
    x, y = digits.load("train")
    x_test, y_test = digits.load("test")
    backend = keras.backend.backend()
    out = RESULTS / "learned_optimizer_finetune.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    row = results.get(backend, {})
    for name, make in optimizers(args.presets).items():
        keras.utils.set_random_seed(0)
        model = applications.LNLSTMClassifier.from_preset("lnlstm_digits")
        before = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
        model.compile(optimizer=make(), loss=model.loss, metrics=["accuracy"])
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        after = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
        row[name] = {"test_accuracy_before": before, "test_accuracy_after": after}
        print(f"{backend} {name}: test accuracy {before:.3f} -> {after:.3f}", flush=True)
    results[backend] = row
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
