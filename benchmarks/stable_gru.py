"""GRU vs StableGRU (S7): gradient spikes and divergence at a high learning rate.

A character LM over the Python standard library's source text (embedding 32,
one recurrent layer of 128 units, softmax), trained with plain SGD at a high
learning rate, no gradient clipping, on long windows (BPTT over 200
characters), for several seeds. Both models start from the same weights per
seed. The loop is functional (`stateless_call` + backend autodiff), so the
gradient norm of every step is recorded; StableGRU's projection is applied
after each update through the variable's constraint, as its `project()` does.

Per run: final training loss (mean of the last 20 steps), number of gradient-
norm spikes (steps whose norm exceeds 10× the median of the first 20 steps,
or is not finite),
and whether it diverged (a non-finite loss, or a final loss above the
initial one). Also σ_max of the candidate recurrent weight at the end.

    KERAS_BACKEND=jax python benchmarks/stable_gru.py [--seeds 3] [--steps 300] \
        [--learning-rates 2 4]

Writes benchmarks/results/stable_gru.json and stable_gru.png.
"""

import argparse
import json
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.datasets import stdlib_text
from kzoo.layers import StableGRU

RESULTS = Path(__file__).resolve().parent / "results"
UNITS = 128


def build(stable, seed):
    keras.utils.set_random_seed(seed)
    layer = (
        StableGRU(UNITS, return_sequences=True)
        if stable
        else keras.layers.GRU(UNITS, return_sequences=True)
    )
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(stdlib_text.VOCAB_SIZE, 32),
            layer,
            keras.layers.Dense(stdlib_text.VOCAB_SIZE),
        ]
    )


def count_spikes(norms, warmup=20):
    """Steps whose gradient norm exceeds 10× the median of the first `warmup`
    steps (a fixed scale: after an explosion a running median explodes too)."""
    scale = np.median(norms[:warmup])
    return int(sum(not n <= 10 * scale for n in norms[warmup:]))


def train(stable, seed, x, y, steps, batch_size, learning_rate):
    model = build(stable, seed)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    constraints = [v.constraint for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def objective(params, xb, yb):
        logits, _ = model.stateless_call(params, non_trainable, xb)
        return loss_fn(yb, logits), ()

    step = backend.compiled_value_and_grad(objective)
    params = [v.value for v in model.trainable_variables]
    rng = np.random.default_rng(seed)
    losses, norms = [], []
    for _ in range(steps):
        idx = rng.integers(0, len(x), size=batch_size)
        (loss, _), grads = step(params, x[idx], y[idx])
        losses.append(float(ops.convert_to_numpy(loss)))
        norms.append(float(np.sqrt(sum(np.sum(np.square(ops.convert_to_numpy(g))) for g in grads))))
        if not np.isfinite(losses[-1]):
            break
        params = [p - learning_rate * g for p, g in zip(params, grads)]
        params = [c(p) if c is not None else p for p, c in zip(params, constraints)]
    kernel = ops.convert_to_numpy(params[2])  # the GRU recurrent kernel
    spikes = count_spikes(norms)
    final = float(np.mean(losses[-20:]))
    return {
        "seed": seed,
        "losses": losses,
        "grad_norms": norms,
        "spikes": int(spikes),
        "final_loss": final,
        "diverged": bool(not np.isfinite(final) or final > losses[0]),
        "candidate_sigma_max": float(np.linalg.svd(kernel[:, 2 * UNITS :], compute_uv=False).max()),
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.2 * len(results)), squeeze=False)
    for row, (rate, models) in zip(axes, results.items()):
        for model, runs in models.items():
            for i, run in enumerate(runs):
                style = {
                    "color": "C0" if model == "GRU" else "C1",
                    "alpha": 0.7,
                    "label": model if i == 0 else None,
                }
                row[0].plot(run["grad_norms"], **style)
                row[1].plot(run["losses"], **style)
        row[0].set_yscale("log")
        row[0].set_title(f"SGD lr {rate}: gradient norm per step")
        row[1].set_title(f"SGD lr {rate}: training loss (nats/char)")
        for ax in row:
            ax.set_xlabel("step")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=200)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[2.0, 4.0])
    args = parser.parse_args()
    x, y = stdlib_text.load("train", sequence_length=args.sequence_length, max_chars=2_000_000)
    results = {rate: {"GRU": [], "StableGRU": []} for rate in args.learning_rates}
    for rate, models in results.items():
        for seed in range(args.seeds):
            for name in models:
                run = train(name == "StableGRU", seed, x, y, args.steps, args.batch_size, rate)
                models[name].append(run)
                print(
                    rate,
                    name,
                    seed,
                    {k: v for k, v in run.items() if k not in ("losses", "grad_norms")},
                    flush=True,
                )
    summary = {
        rate: {
            name: {
                "spikes_total": sum(r["spikes"] for r in runs),
                "diverged": sum(r["diverged"] for r in runs),
                "final_loss_mean": float(np.mean([r["final_loss"] for r in runs])),
                "final_loss_per_seed": [r["final_loss"] for r in runs],
                "max_grad_norm": max(max(r["grad_norms"]) for r in runs),
                "candidate_sigma_max": [r["candidate_sigma_max"] for r in runs],
            }
            for name, runs in models.items()
        }
        for rate, models in results.items()
    }
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stable_gru.json").write_text(
        json.dumps(
            {
                "command": f"KERAS_BACKEND={keras.backend.backend()} "
                f"python benchmarks/stable_gru.py --seeds {args.seeds} --steps {args.steps} "
                "--learning-rates " + " ".join(f"{r:g}" for r in args.learning_rates),
                "settings": vars(args),
                "summary": summary,
                "runs": results,
            }
        )
        + "\n"
    )
    plot(results, RESULTS / "stable_gru.png")


if __name__ == "__main__":
    main()
