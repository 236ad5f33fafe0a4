"""Training throughput vs number of virtual CPU devices (data parallel).

On this 2-core machine the "devices" are slices of the same CPU, so this
measures the overhead of the engines (sharding, all-reduce, per-replica
dispatch), not a speedup. Each device count runs in its own process.

    python benchmarks/data_parallel_throughput.py            # TensorFlow and JAX, 1/2/4 devices

Writes `benchmarks/results/data_parallel_throughput.json`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

_WORKER = r"""
import json, sys, time
from kzoo import backend
devices = int(sys.argv[1])
backend.use_virtual_cpu_devices(devices)
import contextlib
import keras
import numpy as np
from kzoo import applications
from kzoo.datasets import digits

x, y = digits.load("train")
x, y = x[:1024], y[:1024]
keras.utils.set_random_seed(0)
with backend.data_parallel() if devices > 1 else contextlib.nullcontext():
    model = applications.LNLSTMClassifier(units=64)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # compile
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
print(json.dumps({"examples_per_second": len(x) / float(np.median(times))}))
"""


def main():
    out = {}
    for backend in ("tensorflow", "jax"):
        out[backend] = {}
        for devices in (1, 2, 4):
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            done = subprocess.run(
                [sys.executable, "-c", _WORKER, str(devices)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            rate = json.loads(done.stdout.strip().splitlines()[-1])["examples_per_second"]
            out[backend][devices] = rate
            print(f"{backend} {devices} device(s): {rate:.0f} examples/s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_parallel_throughput.json").write_text(
        json.dumps(
            {
                "model": "LNLSTMClassifier(units=64), digits rows, global batch 64",
                "examples_per_second": out,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
