"""Cost of the learned optimizer inside `model.fit` vs Adam, and its state memory.

Times the median train step of `model.fit` (per-batch callback timestamps,
after a warm-up epoch) on the current backend for three models:

- two MLPs on the digits (64-20-10, the optimizer's training problem, and
  64-256-256-10, 85k parameters), batch 128;
- the zoo's convolutional `resnet_texture_patches` (176k parameters) on the
  texture patches, batch 64;

with `LSTMOptimizer` (the zoo's digits-MLP preset) with a float32 and a
bfloat16 state, and with Adam. It records the optimizer state per model
parameter and the arithmetic bound of the LSTM optimizer's step relative to
Adam's: `1 + lstm / model`, where `lstm` is the LSTM's multiply-adds per
parameter per step (every meta-parameter is used once per coordinate, so it
is the size of phi: 5,141) and `model` the model's forward-and-backward
multiply-adds per parameter per step (3 times each weight's uses in the
forward pass).

Each backend runs in its own process, once with glibc's default `malloc`
and once after `kzoo.runtime.tune_cpu_allocator()` (freed buffers kept for
the next step instead of returned to the system and faulted in again):

    python benchmarks/learned_optimizer_cost.py [--backends ...] [--allocators default tuned]

Merges its numbers into `benchmarks/results/learned_optimizer_cost.json`
(`results[backend][allocator][model]`).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from kzoo.datasets import texture_patches
from kzoo.optimizers import LSTMOptimizer
from kzoo.optimizers import problems
from kzoo.zoo import models

RESULTS = Path(__file__).parent / "results"
PRESET = "lstm_optimizer_digits_mlp"


class _StepTimes(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def mlp(hidden):
    def build():
        keras.utils.set_random_seed(0)
        layers = [keras.layers.Dense(h, activation="sigmoid") for h in hidden]
        return keras.Sequential([keras.Input((64,)), *layers, keras.layers.Dense(10)])

    return build


def resnet():
    keras.utils.set_random_seed(0)
    return models.get("resnet_texture_patches", weights=None)


def _patches(count):
    x, y = texture_patches.load("train")[:2]
    return x[:count], y[:count]


def forward_macs_per_parameter(model, batch):
    """Multiply-adds of one forward pass per parameter (Dense and Conv2D weights)."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            macs += batch * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, keras.layers.Conv2D):
            positions = math.prod(layer.output.shape[1:3])
            macs += batch * positions * math.prod(layer.kernel.shape)
    return macs / sum(math.prod(v.shape) for v in model.trainable_variables)


def _itemsize(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def step_time(build, optimizer, x, y, batch, epochs):
    model = build()
    logits = model.layers[-1].get_config().get("activation") != "softmax"
    model.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    )
    timer = _StepTimes()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compile and warm up
    timer.times = []
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer])
    phi = {id(v) for v in getattr(optimizer, "meta_parameters", [])}
    state = [v for v in optimizer.variables if len(v.shape) and id(v) not in phi]
    params = sum(math.prod(v.shape) for v in model.trainable_variables)
    return {
        "median_step_ms": 1e3 * float(np.median(timer.times)),
        "parameters": params,
        "state_numbers_per_parameter": sum(math.prod(v.shape) for v in state) / params,
        "state_bytes_per_parameter": sum(math.prod(v.shape) * _itemsize(v.dtype) for v in state)
        / params,
        "meta_parameters": sum(math.prod(v.shape) for v in optimizer.variables if id(v) in phi),
        "forward_backward_macs_per_parameter": 3 * forward_macs_per_parameter(model, batch),
    }


def op_breakdown(build):
    """PyTorch only: self CPU time per op of one eager `apply` on `build()`'s variables."""
    import torch
    from torch.profiler import profile

    variables = build().trainable_variables
    optimizer = LSTMOptimizer.from_preset(PRESET)
    optimizer.build(variables)
    rng = np.random.default_rng(0)
    grads = [1e-3 * rng.standard_normal(v.shape).astype("float32") for v in variables]
    grads = [keras.ops.convert_to_tensor(g) for g in grads]
    with torch.no_grad():
        for _ in range(3):
            optimizer.apply(grads, variables)
        with profile() as prof:
            for _ in range(5):
                optimizer.apply(grads, variables)
    times = {e.key: e.self_cpu_time_total / 5e3 for e in prof.key_averages()}
    top = sorted(times, key=times.get, reverse=True)[:8]
    return {"total_ms": sum(times.values()), **{k: times[k] for k in top}}


MODELS = ("mlp_64-20-10", "mlp_64-256-256-10", "resnet_texture_patches")


def measure(allocator, names=MODELS):
    """This process' numbers on its backend for the models `names`.

    `allocator` labels its progress lines.
    """
    digits = problems.load_dataset("digits")[:2]
    cases = {
        "mlp_64-20-10": lambda: (mlp((20,)), digits, 128, 5),
        "mlp_64-256-256-10": lambda: (mlp((256, 256)), digits, 128, 5),
        "resnet_texture_patches": lambda: (resnet, _patches(1024), 64, 1),
    }
    cases = {name: cases[name]() for name in names}
    backend = keras.backend.backend()
    results = {}
    for name, (build, (x, y), batch, epochs) in cases.items():
        runs = {
            "LSTM": LSTMOptimizer.from_preset(PRESET),
            "LSTM_bfloat16": LSTMOptimizer.from_preset(PRESET, state_dtype="bfloat16"),
            "Adam": keras.optimizers.Adam(1e-3),
        }
        row = {k: step_time(build, opt, x, y, batch, epochs) for k, opt in runs.items()}
        lstm_macs = row["LSTM"]["meta_parameters"]
        model_macs = row["Adam"]["forward_backward_macs_per_parameter"]
        adam = row["Adam"]["median_step_ms"]
        row["ratio"] = row["LSTM"]["median_step_ms"] / adam
        row["ratio_bfloat16"] = row["LSTM_bfloat16"]["median_step_ms"] / adam
        row["arithmetic_bound"] = 1 + lstm_macs / model_macs
        results[name] = row
        lstm = row["LSTM"]["median_step_ms"]
        print(
            f"{backend} ({allocator} allocator) {name}: LSTM {lstm:.2f} ms "
            f"(bfloat16 state {row['LSTM_bfloat16']['median_step_ms']:.2f}), "
            f"Adam {adam:.2f} ms, ratio {row['ratio']:.2f} (bound {row['arithmetic_bound']:.2f}), "
            f"state bytes/param {row['LSTM']['state_bytes_per_parameter']:.0f} / "
            f"{row['LSTM_bfloat16']['state_bytes_per_parameter']:.0f} vs "
            f"{row['Adam']['state_bytes_per_parameter']:.0f}",
            file=sys.stderr,
            flush=True,
        )
    if backend == "torch":
        results["op_breakdown_mlp_64-256-256-10_ms"] = op_breakdown(mlp((256, 256)))
        print(results["op_breakdown_mlp_64-256-256-10_ms"], file=sys.stderr)
    return results


# A child process: the allocator is set before Keras loads a framework.
CHILD = """
import json, sys
from kzoo import runtime
if sys.argv[1] == "tuned":
    assert runtime.tune_cpu_allocator(), "glibc refused the allocator settings"
sys.path.insert(0, sys.argv[2])
import learned_optimizer_cost
print(json.dumps(learned_optimizer_cost.measure(sys.argv[1])))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--allocators", nargs="+", default=["default", "tuned"])
    args = parser.parse_args()
    out = RESULTS / "learned_optimizer_cost.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for backend in args.backends:
        for allocator in args.allocators:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            child = subprocess.run(
                [sys.executable, "-c", CHILD, allocator, str(Path(__file__).parent)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            results.setdefault(backend, {})[allocator] = json.loads(child.stdout.splitlines()[-1])
            RESULTS.mkdir(exist_ok=True)
            out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
