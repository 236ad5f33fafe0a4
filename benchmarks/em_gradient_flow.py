"""Gradient decay through unrolled EM vs HighwayEM, and their cost.

Features: the pretrained FCN's 1/8-resolution features (fc6) of 16 texture-
scenes test images (64 positions x 64 channels each), K = 16 unit bases, at
three scales (the E-step softmax is sharper the larger the features): as they
are (median norm 5.5), normalized to unit norm per position, and 3x that. The
loss is a fixed random projection of the reconstruction `Z mu` after T
iterations. Measured for T = 1..10: the norm of dL/dX (the EM input) and of
dL/dmu_0 (the initial bases: the gradient that must cross every iteration),
for unrolled EM (gamma = 1, gradients through the iterations) and HighwayEM at
gamma = 0.8, 0.5, 0.2. Cost: wall time and XLA temporary memory of the jitted
gradient (JAX, CPU), and the train-step time of the whole segmenter (HEMNet vs
unrolled-EM EMANet) on TensorFlow.

    KERAS_BACKEND=jax python benchmarks/em_gradient_flow.py

Writes benchmarks/results/em_gradient_flow.json and em_gradient_flow.png.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GAMMAS = (1.0, 0.8, 0.5, 0.2)
STEPS = range(1, 11)


def features():
    import keras

    from kzoo import applications
    from kzoo.datasets import texture_scenes

    fcn = applications.get("fcn_texture_scenes", weights="pretrained")
    probe = keras.Model(fcn.input, fcn.get_layer("fc6_relu").output)
    images, _ = texture_scenes.load("test")
    x = np.asarray(probe.predict(images[:16], verbose=0))
    return x.reshape(len(x), -1, x.shape[-1])


def gradient_norms(x, mu0, upstream):
    import jax
    import jax.numpy as jnp

    from kzoo.layers import em_attention as em

    def loss(features, bases, iterations, gamma):
        z, mu = em.em_iterations(features, bases, iterations, gamma=gamma)
        return jnp.sum(jnp.matmul(z, mu) * upstream)

    rows = {}
    for gamma in GAMMAS:
        rows[str(gamma)] = {}
        for t in STEPS:
            gx, gmu = jax.grad(loss, argnums=(0, 1))(x, mu0, t, gamma)
            rows[str(gamma)][str(t)] = {
                "dL_dX": float(jnp.linalg.norm(gx)),
                "dL_dmu0": float(jnp.linalg.norm(gmu)),
            }
    return rows, loss


def cost(x, mu0, loss):
    import jax

    out = {}
    for t in (3, 10):
        for gamma in (1.0, 0.5):
            step = jax.jit(jax.grad(lambda a, b: loss(a, b, t, gamma), argnums=(0, 1)))
            compiled = step.lower(x, mu0).compile()
            memory = compiled.memory_analysis()
            jax.block_until_ready(step(x, mu0))
            times = []
            for _ in range(50):
                start = time.perf_counter()
                jax.block_until_ready(step(x, mu0))
                times.append(time.perf_counter() - start)
            out[f"T={t} gamma={gamma}"] = {
                "ms": 1000 * float(np.median(times)),
                "temp_bytes": int(memory.temp_size_in_bytes) if memory else None,
            }
    return out


def train_step_times():
    """HEMNet vs unrolled-EM EMANet train step on TensorFlow (its own process)."""
    code = """
import json, time, numpy as np, keras
from kzoo import applications
from kzoo.datasets import texture_scenes
x, y = texture_scenes.load("validation")
x, y = x[:16], y[:16]
out = {}
for label, model in [("unrolled_em", applications.EMANet(stop_gradient=False)),
                     ("highway_em", applications.HEMNet(learnable_gamma=False)),
                     ("emanet_stopped", applications.EMANet())]:
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for _ in range(5):
        model.train_on_batch(x, y)
    times = []
    for _ in range(40):
        start = time.perf_counter(); model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    out[label] = 1000 * float(np.median(times))
print(json.dumps(out))
"""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    rng = np.random.default_rng(0)
    x = features().astype("float32")
    mu0 = rng.normal(size=(16, x.shape[-1]))
    mu0 = (mu0 / np.linalg.norm(mu0, axis=-1, keepdims=True)).astype("float32")
    upstream = rng.normal(size=x.shape).astype("float32")
    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    scales = {"raw": x, "unit_norm": unit, "3x_unit_norm": 3 * unit}
    norms, ratios = {}, {}
    for name, features_at_scale in scales.items():
        norms[name], loss = gradient_norms(features_at_scale.astype("float32"), mu0, upstream)
        ratios[name] = {
            gamma: norms[name][gamma]["10"]["dL_dmu0"] / norms[name]["1.0"]["10"]["dL_dmu0"]
            for gamma in norms[name]
        }
    results = {
        "features": list(x.shape),
        "bases": 16,
        "median_feature_norm": float(np.median(np.linalg.norm(x, axis=-1))),
        "gradient_norms": norms,
        "dL_dmu0_highway_vs_unrolled_at_T10": ratios,
        "jax_gradient_cost": cost(x, mu0, loss),
        "train_step_ms_tensorflow": train_step_times(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "em_gradient_flow.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "gradient_norms"}, indent=1))
    plot(norms)


def plot(norms):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(norms), figsize=(5 * len(norms), 4))
    for ax, (scale, by_gamma) in zip(axes, norms.items()):
        for gamma, rows in by_gamma.items():
            label = "unrolled EM" if gamma == "1.0" else f"HighwayEM gamma={gamma}"
            ax.plot(list(STEPS), [rows[str(t)]["dL_dmu0"] for t in STEPS], marker="o", label=label)
        ax.set(
            yscale="log",
            xlabel="EM iterations T",
            ylabel="||dL/dmu_0||",
            title=f"features: {scale}",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "em_gradient_flow.png", dpi=120)


if __name__ == "__main__":
    main()
