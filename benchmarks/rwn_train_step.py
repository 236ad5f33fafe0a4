"""Train-step time of the zoo's RWN, and of its pixel affinities with gradients.

`PixelAffinity` computes the affinities as one XLA cluster when training on
TensorFlow (`kzoo.backend.fused`) and with plain TensorFlow ops in inference
(what every export runs). This compares the two on TensorFlow, beside JAX and
PyTorch, on 2 CPU cores, each backend in its own process:

- `rwn_train_step`: median `train_on_batch` of `RWN()` (the zoo's
  `rwn_texture_scenes` architecture: 64x64 images, R = 5, 35 affinity
  features), batch 8, Adam, cross-entropy on the segmentation;
- `affinities`: `pixel_affinities` alone on `(batch, 64, 64, 35)` features,
  forward, and forward and backward, at batch 1 and 8 (compiled:
  `tf.function`, `jax.jit`; PyTorch eager).

TensorFlow is measured twice: as training runs it now (`fused`) and through
the plain ops (`plain`: the previous training path, and today's inference
path).

    python benchmarks/rwn_train_step.py        # ~3 min

Writes benchmarks/results/rwn_train_step.json and .png.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(RESULTS.parent))
from random_walk_runtime import median_ms  # noqa: E402  (a sibling benchmark script)

RUNS = (("tensorflow", "fused"), ("tensorflow", "plain"), ("jax", "fused"), ("torch", "fused"))


def measure(path):
    """In a process of one backend: the train step and the affinities."""
    import keras
    import numpy as np

    from kzoo.applications.segmentation import RWN
    from kzoo.layers import random_walk as rw

    name = keras.backend.backend()
    if path == "plain":
        rw._training_affinities = lambda: rw.pixel_affinities
    rng = np.random.default_rng(0)
    model = RWN()
    model.compile(
        "adam",
        loss={"segmentation_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    size = model.input_shape[1]
    x = rng.random((8, size, size, 3)).astype("float32")
    y = {"segmentation_logits": rng.integers(0, 5, (8, size, size))}
    result = {"rwn_train_step_batch_8": median_ms(lambda: model.train_on_batch(x, y), runs=10)}

    affinities = rw._training_affinities()
    radius, channels = 5, 35
    weights = -rng.uniform(0.05, 0.15, size=(channels,)).astype("float32")
    for batch in (1, 8):
        features = rng.normal(size=(batch, size, size, channels)).astype("float32")
        upstream = rng.normal(size=(batch, size, size, 81)).astype("float32")
        forward, with_gradients = _compiled(name, affinities, features, weights, upstream, radius)
        result[f"affinities_forward_batch_{batch}"] = median_ms(forward, runs=15)
        result[f"affinities_with_gradients_batch_{batch}"] = median_ms(with_gradients, runs=15)
    return result


def _compiled(name, affinities, features, weights, upstream, radius):
    """Forward and forward-and-backward callables, compiled as the backend's
    train step would compile them, that block until done."""
    from keras import ops

    def loss(x, w):
        return ops.sum(ops.multiply(affinities(x, w, radius=radius), upstream))

    if name == "jax":
        import jax

        forward = jax.jit(lambda x, w: affinities(x, w, radius=radius))
        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return (
            lambda: forward(features, weights).block_until_ready(),
            lambda: jax.block_until_ready(grad(features, weights)),
        )
    if name == "tensorflow":
        import tensorflow as tf

        x, w = tf.constant(features), tf.constant(weights)
        forward = tf.function(lambda x, w: affinities(x, w, radius=radius))

        @tf.function
        def grad(x, w):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                value = loss(x, w)
            return tape.gradient(value, [x, w])

        return lambda: forward(x, w).numpy(), lambda: [g.numpy() for g in grad(x, w)]
    import torch

    x = torch.tensor(features, requires_grad=True)
    w = torch.tensor(weights, requires_grad=True)

    def forward():
        with torch.no_grad():
            affinities(x, w, radius=radius)

    def with_gradients():
        x.grad = w.grad = None
        loss(x, w).backward()

    return forward, with_gradients


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{b}\n({p})" if b == "tensorflow" else b for b, p in RUNS]
    keys = [f"{b}/{p}" for b, p in RUNS]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, title in (
        (axes[0], "rwn_train_step_batch_8", "RWN train step, batch 8 (ms)"),
        (axes[1], "affinities_with_gradients_batch_8", "pixel affinities fwd+bwd, batch 8 (ms)"),
    ):
        values = [results[k][metric] for k in keys]
        ax.bar(labels, values, color=["C0", "C7", "C1", "C2"])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(measure(sys.argv[2])))
        return
    results = {"unit": "ms (median)", "cpu_count": os.cpu_count()}
    for name, path in RUNS:
        env = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run(
            [sys.executable, __file__, "--worker", path],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[f"{name}/{path}"] = json.loads(out.strip().splitlines()[-1])
        print(name, path, results[f"{name}/{path}"], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rwn_train_step.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, RESULTS / "rwn_train_step.png")


if __name__ == "__main__":
    main()
