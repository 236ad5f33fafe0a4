"""Where the LN-LSTM's time goes on JAX: one hand-written `lax.scan`, three ways.

Forward and backward (the gradient of a sum of squares of every output) of an
LSTM with 256 units over 64 steps at batch 64 with 32 input features:
`plain` (no normalization, as `keras.layers.LSTM`), `ln` (the LN-LSTM with
the input projection normalized inside the loop) and `precomputed` (that
projection normalized for the whole sequence before the loop), each with the
scan unrolled 1, 4 and 8 steps; and one layer norm of the whole
`(64, 64, 1024)` projection alone. Median of 15 compiled calls.

    KERAS_BACKEND=jax python benchmarks/ln_scan_profile.py

Writes benchmarks/results/ln_scan_profile.json.
"""

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BATCH, STEPS, FEATURES, UNITS = 64, 64, 32, 256


def _ln(x, gamma, beta):
    mean = jnp.mean(x, -1, keepdims=True)
    centered = x - mean
    variance = jnp.mean(centered * centered, -1, keepdims=True)
    return centered * jax.lax.rsqrt(variance + 1e-3) * gamma + beta


def _gradient(kind, unroll, sequence):
    def loss(p):
        def step(carry, x):
            h, c = carry
            if kind == "plain":
                z = x @ p["W"] + h @ p["U"] + p["b"]
            elif kind == "ln":
                z = _ln(x @ p["W"], p["g1"], p["b1"]) + _ln(h @ p["U"], p["g2"], p["b2"]) + p["b"]
            else:
                z = x + _ln(h @ p["U"], p["g2"], p["b2"])
            i, f, g, o = jnp.split(z, 4, -1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            out = jnp.tanh(c) if kind == "plain" else jnp.tanh(_ln(c, p["g3"], p["b3"]))
            h = jax.nn.sigmoid(o) * out
            return (h, c), h

        xs = sequence
        if kind == "precomputed":
            xs = _ln(sequence @ p["W"], p["g1"], p["b1"]) + p["b"]
        zeros = jnp.zeros((BATCH, UNITS))
        _, hs = jax.lax.scan(step, (zeros, zeros), xs, unroll=unroll)
        return jnp.sum(hs**2)

    return jax.jit(jax.grad(loss))


def _median_ms(fn, *args, runs=15):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main():
    rng = np.random.default_rng(0)
    sequence = jnp.asarray(rng.normal(size=(STEPS, BATCH, FEATURES)), "float32")
    params = {
        "W": jnp.asarray(rng.normal(size=(FEATURES, 4 * UNITS)) * 0.1, "float32"),
        "U": jnp.asarray(rng.normal(size=(UNITS, 4 * UNITS)) * 0.05, "float32"),
        **{k: jnp.zeros(4 * UNITS) for k in ("b", "b1", "b2")},
        **{k: jnp.ones(4 * UNITS) for k in ("g1", "g2")},
        "g3": jnp.ones(UNITS),
        "b3": jnp.zeros(UNITS),
    }
    results = {"unit": "ms, forward + backward (median)", "cpu_count": os.cpu_count()}
    for kind in ("plain", "ln", "precomputed"):
        for unroll in (1, 4, 8):
            results[f"{kind}/unroll{unroll}"] = _median_ms(
                _gradient(kind, unroll, sequence), params
            )
            print(kind, unroll, round(results[f"{kind}/unroll{unroll}"], 1), "ms", flush=True)
    projection = jnp.asarray(rng.normal(size=(STEPS, BATCH, 4 * UNITS)), "float32")
    whole = jax.jit(jax.grad(lambda x: jnp.sum(_ln(x, params["g1"], params["b1"]) ** 2)))
    results["layer_norm_of_whole_projection"] = _median_ms(whole, projection)
    print("whole-sequence layer norm", round(results["layer_norm_of_whole_projection"], 1), "ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ln_scan_profile.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
