"""The learned step size of the moments-network presets on training and held-out tasks.

The `inputs="moments"` network outputs a direction `d` and a log step size
`s` (`kzoo.optimizers.learned`); its update is `0.001 * d * exp(5 tanh(s / 5))`.
This runs each preset for 1000 steps on 4 problems of a training family and
of three held-out tasks, and records every 100 steps the loss and the
geometric mean over coordinates of the step-size factor `exp(5 tanh(s / 5))`
(the update over the same update with `s = 0`).

    KERAS_BACKEND=jax python benchmarks/learned_optimizer_step_size.py \
        --presets lstm_optimizer_general_moments lstm_optimizer_general_rescaled \
        lstm_optimizer_general_long_unroll

Writes `benchmarks/results/learned_optimizer_step_size.json` and `.png`. JAX only: it
differentiates the problems with `jax.value_and_grad`.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kzoo.optimizers import learned
from kzoo.optimizers import problems

PRESETS = ["lstm_optimizer_general_moments"]
TASKS = {
    "digits_mlp_32_relu (training family)": lambda: problems.MLP("digits", (32,), "relu", 128),
    "texture_mlp_relu (held out)": lambda: problems.MLP(
        "texture_patches_8x8", (64, 64), "relu", 128
    ),
    "texture_mlp_elu_3_layers (held out)": lambda: problems.MLP(
        "texture_patches_8x8", (32, 32, 32), "elu", 128
    ),
    "diabetes_mlp_tanh (held out)": lambda: problems.MLP("diabetes", (16,), "tanh", 32),
}


def trace(problem, phi, architecture, steps=1000, num_problems=4, seed=5):
    """Loss and geometric-mean step-size factor every 100 steps."""
    unscaled = [*phi[:-2], phi[-2].at[:, 1].set(0.0), phi[-1].at[1].set(0.0)]
    options = {k: architecture[k] for k in ("output_scale", "preprocess", "exponent", "inputs")}
    rng = np.random.default_rng(seed)
    params, constants = problem.sample(rng, num_problems)
    batches = problem.batches(rng, num_problems, steps)
    params = [jnp.asarray(p) for p in params]
    size = sum(p.size for p in params)
    state = learned.initial_state(
        (size,), architecture["units"], architecture["num_layers"], inputs="moments"
    )

    @jax.jit
    def one(params, state, batch):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(problem.loss(p, constants, batch)))(
            params
        )
        flat = jnp.concatenate([g.reshape(-1) for g in grads])
        update, new_state = learned.step(phi, flat, state, **options)
        plain, _ = learned.step(unscaled, flat, state, **options)
        factor = jnp.exp(jnp.mean(jnp.log(jnp.abs(update) / jnp.abs(plain))))
        out, start = [], 0
        for p in params:
            out.append(p + update[start : start + p.size].reshape(p.shape))
            start += p.size
        return out, new_state, loss / num_problems, factor

    rows = []
    for t in range(steps):
        batch = {k: jnp.asarray(v[t]) for k, v in batches.items()}
        params, state, loss, factor = one(params, state, batch)
        if t % 100 == 0 or t == steps - 1:
            rows.append({"step": t, "loss": float(loss), "step_size_factor": float(factor)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    args = parser.parse_args()
    results = {}
    for preset in args.presets:
        phi, architecture = learned.load_meta_parameters(preset)
        phi = [jnp.asarray(p) for p in phi]
        results[preset] = {}
        for name, make in TASKS.items():
            rows = results[preset][name] = trace(make(), phi, architecture)
            print(
                f"{preset} on {name}: loss {rows[-1]['loss']:.4g}, "
                f"step-size factor {rows[-1]['step_size_factor']:.2f}",
                flush=True,
            )
    path = Path(__file__).parent / "results" / "learned_optimizer_step_size.json"
    path.write_text(json.dumps({"presets": results}, indent=1))
    plot(results, path.with_suffix(".png"))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.5 * len(results)), squeeze=False)
    for row, (preset, tasks) in zip(axes, results.items()):
        for name, rows in tasks.items():
            steps = [r["step"] for r in rows]
            row[0].semilogy(steps, [r["loss"] for r in rows], label=name)
            row[1].semilogy(steps, [r["step_size_factor"] for r in rows], label=name)
        row[0].set(xlabel="step", ylabel="minibatch loss", title=preset)
        row[1].set(xlabel="step", ylabel="learned step-size factor (geometric mean)", title=preset)
    axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
