"""Matrix backprop (S5): cost and robustness of the spectral layers' gradients.

Per backend (TensorFlow and JAX compiled, PyTorch eager), on batches of 64
SPD matrices 64×64 (covariances of 256 random 64-d features + 1e-3 I):

- forward+backward time of `matrix_log` (gap-safe Daleckii–Krein backward)
  vs naive autodiff of `keras.ops.eigh` + log;
- forward+backward time of the square root by eigendecomposition vs
  Newton–Schulz (5 iterations, iSQRT-COV's setting, and 15), and their
  relative error against the eigendecomposition;
- on near-degenerate inputs (rank-deficient covariances of 16 samples + εI;
  rotated matrices with blocks of equal eigenvalues; diagonal matrices with
  repeated entries): the fraction of matrices whose log gradient has a
  non-finite entry, and the median relative error of the finite ones against
  a float64 numpy Daleckii–Krein reference (exact divided differences,
  1/λ between equal eigenvalues).

    python benchmarks/matrix_backprop.py [--repeats 10]

Writes benchmarks/results/matrix_backprop.json and matrix_backprop.png.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BATCH, N = 64, 64


def spd_batch(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(BATCH, 4 * N, N))
    return (features.transpose(0, 2, 1) @ features / (4 * N) + 1e-3 * np.eye(N)).astype("float32")


def degenerate_batches(seed=1):
    rng = np.random.default_rng(seed)
    samples = rng.normal(size=(BATCH, 16, N))
    rank_deficient = samples.transpose(0, 2, 1) @ samples / 16 + 1e-3 * np.eye(N)
    values = np.repeat(rng.uniform(0.5, 2.0, size=(BATCH, N // 8)), 8, axis=1)
    q = np.linalg.qr(rng.normal(size=(BATCH, N, N)))[0]
    blocks = (q * values[:, None, :]) @ q.transpose(0, 2, 1)
    diagonal = values[:, :, None] * np.eye(N)
    return {
        "rank_deficient_plus_eps": rank_deficient,
        "equal_eigenvalue_blocks": blocks,
        "repeated_diagonal": diagonal,
    }


def reference_log_gradient(x, upstream):
    """float64 Daleckii–Krein gradient of sum(upstream * log X), in numpy."""
    lam, u = np.linalg.eigh(x.astype("float64"))
    li, lj = lam[..., :, None], lam[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(
            np.isclose(li, lj, rtol=1e-12, atol=0), 1.0 / li, (np.log(li) - np.log(lj)) / (li - lj)
        )
    g = 0.5 * (upstream + np.swapaxes(upstream, -1, -2))
    ut = np.swapaxes(u, -1, -2)
    return u @ (k * (ut @ g @ u)) @ ut


def measure(repeats):
    import keras
    from keras import ops

    from kzoo import backend
    from kzoo.layers import matrix_backprop as mb

    def naive_log(x):
        lam, u = ops.eigh(x)
        return ops.matmul(u * ops.expand_dims(ops.log(lam), -2), ops.swapaxes(u, -1, -2))

    functions = {
        "log_kzoo": mb.matrix_log,
        "log_naive_autodiff": naive_log,
        "sqrt_eigh": lambda x: mb.matrix_power(x, 0.5),
        "sqrt_newton_schulz_5": lambda x: mb.newton_schulz_sqrt(x, 5),
        "sqrt_newton_schulz_15": lambda x: mb.newton_schulz_sqrt(x, 15),
    }
    upstream = np.random.default_rng(2).normal(size=(BATCH, N, N)).astype("float32")
    steps = {}
    for name, fn in functions.items():

        def loss(params, weights, fn=fn):
            y = fn(params[0])
            return ops.sum(y * weights), y

        steps[name] = backend.compiled_value_and_grad(loss)

    def run(name, x):
        (_, y), (grad,) = steps[name]([ops.convert_to_tensor(x)], ops.convert_to_tensor(upstream))
        return ops.convert_to_numpy(y), ops.convert_to_numpy(grad)

    x = spd_batch()
    out = {"backend": keras.backend.backend(), "times_ms": {}}
    for name in functions:
        run(name, x)  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(name, x)
            times.append(time.perf_counter() - start)
        out["times_ms"][name] = 1e3 * float(np.median(times))
    exact, _ = run("sqrt_eigh", x)
    for iterations in (5, 15):
        approx, _ = run(f"sqrt_newton_schulz_{iterations}", x)
        out[f"newton_schulz_{iterations}_relative_error"] = float(
            np.median(
                np.linalg.norm(approx - exact, axis=(1, 2)) / np.linalg.norm(exact, axis=(1, 2))
            )
        )
    out["degenerate"] = {}
    for kind, batch in degenerate_batches().items():
        reference = reference_log_gradient(batch, upstream)
        row = {}
        for name in ("log_kzoo", "log_naive_autodiff"):
            _, grad = run(name, batch.astype("float32"))
            finite = np.all(np.isfinite(grad), axis=(1, 2))
            error = np.linalg.norm(grad - reference, axis=(1, 2)) / np.linalg.norm(
                reference, axis=(1, 2)
            )
            row[name] = {
                "non_finite_rate": float(1 - finite.mean()),
                "median_relative_error_of_finite": float(np.median(error[finite]))
                if finite.any()
                else None,
            }
        out["degenerate"][kind] = row
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["times_ms"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        ax.bar(
            np.arange(len(names)) + i * width,
            [r["times_ms"][n] for n in names],
            width,
            label=r["backend"],
        )
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=8)
    ax.set_ylabel("forward+backward, ms")
    ax.set_title(f"batch {BATCH} of {N}x{N} SPD matrices, 2 CPU cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.repeats)))
        return
    results = []
    for name in ("tensorflow", "jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, __file__, "--worker", "--repeats", str(args.repeats)],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise SystemExit(done.stderr)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "matrix_backprop.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/matrix_backprop.py",
                "batch": BATCH,
                "n": N,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    plot(results, RESULTS / "matrix_backprop.png")


if __name__ == "__main__":
    main()
