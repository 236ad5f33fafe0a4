"""Formulations of one random-walk step tried against the stencil, per backend.

Batch 1, 128x128, R = 5 (81 neighbours), 21 classes, all cores, compiled as
each backend compiles (`tf.function`, `jax.jit`, PyTorch eager):

- `stencil`: `random_walk_step`, 81 shifted multiply-adds (what kzoo uses);
- `patches`: `keras.ops.image.extract_patches` of f (all 121 window offsets
  in one op) and one einsum with A embedded in the 121 slots;
- `stacked`: the 81 shifted copies of f stacked, one einsum with A;
- `neighbour_first`: the stencil with A transposed to `(P, batch, H, W)`.

    python benchmarks/random_walk_alternatives.py

Writes benchmarks/results/random_walk_alternatives.json.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZE, CLASSES, RADIUS = 128, 21, 5


def measure():
    import keras
    from keras import ops

    from kzoo.layers import random_walk as rw

    rng = np.random.default_rng(0)
    features = rng.normal(size=(1, SIZE, SIZE, 8)).astype("float32")
    weights = -np.abs(rng.normal(size=(8,))).astype("float32")
    f = rng.normal(size=(1, SIZE, SIZE, CLASSES)).astype("float32")
    a = ops.convert_to_numpy(rw.transition_matrix(rw.pixel_affinities(features, weights, RADIUS)))
    offsets = rw.neighbour_offsets(RADIUS)
    window = 2 * RADIUS + 1
    slots = np.zeros((len(offsets), window * window), "float32")
    slots[np.arange(len(offsets)), (offsets[:, 0] + RADIUS) * window + offsets[:, 1] + RADIUS] = 1

    def shifted(padded, dy, dx):
        return padded[:, RADIUS + dy : RADIUS + dy + SIZE, RADIUS + dx : RADIUS + dx + SIZE, :]

    def pad(x):
        return ops.pad(x, [[0, 0], [RADIUS, RADIUS], [RADIUS, RADIUS], [0, 0]])

    def patches(f, a):
        p = ops.image.extract_patches(f, window, strides=1, padding="same")
        p = ops.reshape(p, (1, SIZE, SIZE, window * window, CLASSES))
        return ops.einsum("bhwp,bhwpk->bhwk", ops.matmul(a, slots), p)

    def stacked(f, a):
        padded = pad(f)
        copies = ops.stack([shifted(padded, dy, dx) for dy, dx in offsets], axis=3)
        return ops.einsum("bhwp,bhwpk->bhwk", a, copies)

    def neighbour_first(f, a):
        padded = pad(f)
        a_first = ops.expand_dims(ops.transpose(a, (3, 0, 1, 2)), -1)
        out = None
        for p, (dy, dx) in enumerate(offsets):
            term = a_first[p] * shifted(padded, dy, dx)
            out = term if out is None else out + term
        return out

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compile_fn = tf.function
    elif backend == "jax":
        import jax

        compile_fn = jax.jit
    else:
        compile_fn = lambda fn: fn  # noqa: E731
    f_t, a_t = ops.convert_to_tensor(f), ops.convert_to_tensor(a)
    reference = ops.convert_to_numpy(rw.random_walk_step(f_t, a_t, "stencil"))
    candidates = {
        "stencil": lambda f, a: rw.random_walk_step(f, a, "stencil"),
        "patches": patches,
        "stacked": stacked,
        "neighbour_first": neighbour_first,
    }
    results = {}
    for name, fn in candidates.items():
        compiled = compile_fn(fn)
        out = ops.convert_to_numpy(compiled(f_t, a_t))
        times = []
        for _ in range(10):
            start = time.perf_counter()
            ops.convert_to_numpy(compiled(f_t, a_t))
            times.append(time.perf_counter() - start)
        results[name] = {
            "ms": 1000 * float(np.median(times)),
            "max_abs_diff_vs_stencil": float(np.abs(out - reference).max()),
        }
    return results


def main():
    if "--worker" in sys.argv:
        print(json.dumps(measure()))
        return
    results = {"size": SIZE, "classes": CLASSES, "radius": RADIUS, "cpu_count": os.cpu_count()}
    for backend in ("tensorflow", "jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True
        )
        if done.returncode:
            raise SystemExit(f"{backend} failed:\n{done.stderr[-3000:]}")
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
        print(backend, {k: round(v["ms"], 1) for k, v in results[backend].items()})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "random_walk_alternatives.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
