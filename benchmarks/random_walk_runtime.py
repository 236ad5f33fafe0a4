"""Runtime of one random-walk step and of the converged walk, on one CPU thread.

Same image, same resolution, same A and f everywhere: a 128x128 map, R = 5
(81 neighbours), 21 classes (the paper's VOC setting), A from
`PixelAffinity`'s equations on random features.

- `scipy`: `scipy.sparse` CSR `A @ f` (the reference general sparse matmul);
- per backend: the `stencil` path (compiled: `jax.jit`,
  `tf.function(jit_compile=True)`; PyTorch eager) and the `sparse` path
  (`tf.SparseTensor`, JAX `BCOO`; the matrix built once, outside the timing);
- the converged walk (alpha = 0.01, tolerance 1e-5: 2 iterations) on the
  fastest path;
- dense-CRF post-processing (`pydensecrf2`, 10 mean-field iterations,
  DeepLab's kernels: Gaussian sxy 3 / compat 3, bilateral sxy 121, srgb 5,
  compat 4) on the same image and potentials.

    python benchmarks/random_walk_runtime.py [--size 128] [--radius 5]

Writes benchmarks/results/random_walk_runtime.json.
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
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def problem(size, radius, classes=21, seed=0):
    """(image uint8, transition stencil, potentials) shared by every measurement."""
    os.environ.setdefault("KERAS_BACKEND", "numpy")
    from keras import ops

    from kzoo.layers import random_walk as rw

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(size, size, 3)).astype("uint8")
    features = np.concatenate([image / 255.0, rng.uniform(size=(size, size, 8))], -1)
    weights = -rng.uniform(0.5, 2.0, size=features.shape[-1])
    affinities = rw.pixel_affinities(
        features[None].astype("float32"), weights.astype("float32"), radius
    )
    transition = ops.convert_to_numpy(rw.transition_matrix(affinities)).astype("float32")
    potentials = rng.normal(size=(1, size, size, classes)).astype("float32")
    return image, transition, potentials


def median_ms(fn, runs=30, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def measure_reference(size, radius):
    import scipy.sparse as sp

    from kzoo.layers import random_walk as rw

    image, transition, f = problem(size, radius)
    rows, cols, flat = rw._stencil_positions(size, size, radius)
    matrix = sp.csr_matrix(
        (transition.reshape(-1)[flat], (rows, cols)), shape=(size * size, size * size)
    )
    flat_f = f.reshape(-1, f.shape[-1])
    result = {"scipy_csr_step_ms": median_ms(lambda: matrix @ flat_f), "nnz": int(matrix.nnz)}
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        result["dense_crf_10_iterations_ms"] = None
        return result
    probabilities = np.exp(f[0] - f[0].max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    unary = np.ascontiguousarray(-np.log(probabilities).transpose(2, 0, 1).reshape(21, -1))
    rgb = np.ascontiguousarray(image)

    def crf():
        model = dcrf.DenseCRF2D(size, size, 21)
        model.setUnaryEnergy(unary)
        model.addPairwiseGaussian(sxy=3, compat=3)
        model.addPairwiseBilateral(sxy=121, srgb=5, rgbim=rgb, compat=4)
        return model.inference(10)

    result["dense_crf_10_iterations_ms"] = median_ms(crf, runs=5, warmup=1)
    return result


def measure_backend(size, radius):
    import keras

    from kzoo.layers import random_walk as rw

    _, transition, f = problem(size, radius)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compile_fn = lambda fn: tf.function(fn, jit_compile=True)  # noqa: E731
        to_tensor = tf.constant
    elif backend == "jax":
        import jax

        compile_fn, to_tensor = jax.jit, jax.numpy.asarray
    else:
        import torch

        torch.set_num_threads(1)
        # Keras' device (a GPU where there is one), so `upstream` matches.
        compile_fn, to_tensor = (lambda fn: fn), keras.ops.convert_to_tensor
    f_t, a_t = to_tensor(f), to_tensor(transition)
    out = {}
    stencil = compile_fn(lambda x, a: rw.random_walk_step(x, a, "stencil"))
    out["stencil_step_ms"] = median_ms(lambda: keras.ops.convert_to_numpy(stencil(f_t, a_t)))
    converged = compile_fn(
        lambda x, a: rw.random_walk(
            x, a, "converged", alpha=0.01, tolerance=1e-5, implementation="stencil"
        )
    )
    out["stencil_converged_ms"] = median_ms(lambda: keras.ops.convert_to_numpy(converged(f_t, a_t)))
    upstream = to_tensor(np.random.default_rng(1).normal(size=f.shape).astype("float32"))

    def loss(x, a):
        return keras.ops.sum(rw.random_walk_step(x, a, "stencil") * upstream)

    if backend == "tensorflow":

        @tf.function(jit_compile=True)
        def gradients(x, a):
            with tf.GradientTape() as tape:
                tape.watch([x, a])
                value = loss(x, a)
            return tape.gradient(value, [x, a])

    elif backend == "jax":
        gradients = jax.jit(jax.grad(loss, argnums=(0, 1)))
    else:

        def gradients(x, a):
            x, a = x.detach().requires_grad_(), a.detach().requires_grad_()
            return torch.autograd.grad(loss(x, a), [x, a])

    out["stencil_step_with_gradients_ms"] = median_ms(
        lambda: [keras.ops.convert_to_numpy(g) for g in gradients(f_t, a_t)], runs=10
    )
    if backend == "torch":
        # The path PyTorch takes where it has no CSR product (half precision,
        # torch.compile): products added in place into one buffer.
        from kzoo import backend as kzoo_backend

        offsets = rw.neighbour_offsets(radius)
        padded = torch.nn.functional.pad(f_t, (0, 0, radius, radius, radius, radius))
        out["in_place_step_ms"] = median_ms(
            lambda: kzoo_backend._add_products_in_place(a_t, padded, offsets, radius)
        )

        def in_place_gradients(x, a):
            x, a = x.detach().requires_grad_(), a.detach().requires_grad_()
            padded = torch.nn.functional.pad(x, (0, 0, radius, radius, radius, radius))
            y = kzoo_backend._add_products_in_place(a, padded, offsets, radius)
            return torch.autograd.grad(torch.sum(y * upstream), [x, a])

        out["in_place_step_with_gradients_ms"] = median_ms(
            lambda: in_place_gradients(f_t, a_t), runs=10
        )
    if backend in ("tensorflow", "jax"):
        matrix = rw.sparse_transition_matrix(a_t, radius)
        flat = keras.ops.reshape(f_t, (-1, f.shape[-1]))
        if backend == "tensorflow":
            sparse_step = tf.function(lambda m, x: tf.sparse.sparse_dense_matmul(m, x))
        else:
            sparse_step = jax.jit(lambda m, x: keras.ops.matmul(m, x))
        out["sparse_step_ms"] = median_ms(
            lambda: keras.ops.convert_to_numpy(sparse_step(matrix, flat))
        )
        build = compile_fn(lambda a: rw.sparse_transition_matrix(a, radius))
        out["sparse_build_ms"] = median_ms(lambda: build(a_t), runs=10)
        stencil_ref = keras.ops.convert_to_numpy(stencil(f_t, a_t)).reshape(-1, f.shape[-1])
        sparse_ref = keras.ops.convert_to_numpy(sparse_step(matrix, flat))
        out["max_abs_diff_sparse_vs_stencil"] = float(np.abs(stencil_ref - sparse_ref).max())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fn = measure_reference if args.worker == "reference" else measure_backend
        print(json.dumps(fn(args.size, args.radius)))
        return
    results = {"size": args.size, "radius": args.radius, "classes": 21, "threads": 1}
    for worker in ["reference", *args.backends]:
        env = {
            **os.environ,
            **ONE_THREAD,
            "KERAS_BACKEND": "numpy" if worker == "reference" else worker,
        }
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                worker,
                "--size",
                str(args.size),
                "--radius",
                str(args.radius),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise SystemExit(f"{worker} failed:\n{done.stderr[-3000:]}")
        results[worker] = json.loads(done.stdout.strip().splitlines()[-1])
        print(worker, results[worker], file=sys.stderr)
    scipy_ms = results["reference"]["scipy_csr_step_ms"]
    crf_ms = results["reference"]["dense_crf_10_iterations_ms"]
    for backend in args.backends:
        row = results[backend]
        best = min(v for k, v in row.items() if k in ("stencil_step_ms", "sparse_step_ms"))
        row["fastest_step_vs_scipy"] = best / scipy_ms
        if crf_ms:
            row["dense_crf_vs_fastest_step"] = crf_ms / best
            row["dense_crf_vs_converged"] = crf_ms / row["stencil_converged_ms"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "random_walk_runtime.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
