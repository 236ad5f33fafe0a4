"""Cost of the learned optimizer inside `model.fit` vs Adam, and its state memory.

Times the median train step of `model.fit` (per-batch callback timestamps,
after a warm-up epoch) for two MLPs on the digits with `LSTMOptimizer` (the
zoo's digits-MLP preset) and with Adam, on the current backend, and counts the
optimizer-state floats per model parameter.

    KERAS_BACKEND=jax python benchmarks/learned_optimizer_cost.py

Merges its numbers into `benchmarks/results/learned_optimizer_cost.json`.
"""

import json
import time
from pathlib import Path

import keras
import numpy as np

from kzoo.optimizers import LSTMOptimizer
from kzoo.optimizers import problems

RESULTS = Path(__file__).parent / "results"
MODELS = {"mlp_64-20-10": (20,), "mlp_64-256-256-10": (256, 256)}


class _StepTimes(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def step_time(hidden, optimizer, x, y):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            *[keras.layers.Dense(h, activation="sigmoid") for h in hidden],
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    timer = _StepTimes()
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)  # compile and warm up
    timer.times = []
    model.fit(x, y, batch_size=128, epochs=5, verbose=0, callbacks=[timer])
    state = sum(int(np.prod(v.shape)) for v in optimizer.variables if len(v.shape))
    meta_parameters = sum(int(np.prod(v.shape)) for v in getattr(optimizer, "meta_parameters", []))
    params = model.count_params()
    return {
        "median_step_ms": 1e3 * float(np.median(timer.times)),
        "parameters": params,
        "state_floats_per_parameter": (state - meta_parameters) / params,
        "meta_parameters": meta_parameters,
    }


def main():
    x, y = problems._digits_train()
    backend = keras.backend.backend()
    out = RESULTS / "learned_optimizer_cost.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results[backend] = {}
    for name, hidden in MODELS.items():
        lstm = step_time(hidden, LSTMOptimizer.from_preset("lstm_optimizer_digits_mlp"), x, y)
        adam = step_time(hidden, keras.optimizers.Adam(1e-3), x, y)
        results[backend][name] = {
            "LSTM": lstm,
            "Adam": adam,
            "ratio": lstm["median_step_ms"] / adam["median_step_ms"],
        }
        print(
            f"{backend} {name}: LSTM {lstm['median_step_ms']:.2f} ms, "
            f"Adam {adam['median_step_ms']:.2f} ms, ratio {results[backend][name]['ratio']:.2f}, "
            f"state floats/param {lstm['state_floats_per_parameter']:.1f} vs "
            f"{adam['state_floats_per_parameter']:.1f}",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
