"""Shared filter bases (S6): parameters, accuracy and gradient flow.

Three ResNets on the texture patches with the same trunk, data, optimizer
(the zoo task's Adam) and budget:

- `unshared`: plain 3×3 convolutions;
- `shared`: one filter basis per stage, `OrthogonalBasis(10)` (the zoo's);
- `shared_no_orthogonality`: the same without the regularizer.

Reports parameters, held-out test accuracy per seed, and at every epoch end
the gradient norm of each residual block's own weights and of each stage's
shared basis on a fixed batch of 256 training patches (the loss gradients
`kzoo.callbacks.GradientFlow` uses, grouped by block instead of by layer: a
shared basis belongs to every layer of its stage, so per-layer norms would
count it several times), and the basis' orthogonality error
`mean((B̂ B̂ᵀ − I)²)` and row norms.

    KERAS_BACKEND=jax python benchmarks/shared_basis.py [--seeds 2] [--epochs 15]

Writes benchmarks/results/shared_basis.json and shared_basis.png.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.applications import SharedBasisResNet
from kzoo.layers import FilterBasis
from kzoo.layers import shared_basis
from kzoo.zoo.tasks import TASKS

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "unshared": {"shared": False},
    "shared": {"shared": True, "orthogonality": 10.0},
    "shared_no_orthogonality": {"shared": True, "orthogonality": 0.0},
}


def _group(path):
    """`stageS_blockB` for a block's own weights, `stageS_basis` for a basis."""
    parts = path.split("/")
    basis = [p for p in parts if p.endswith("_basis")]
    if basis:
        return basis[0]
    name = parts[0]
    return "_".join(name.split("_")[:2]) if name.startswith("stage") else name


class BlockGradients(keras.callbacks.Callback):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.history = x, y, []

    def on_epoch_end(self, epoch, logs=None):
        _, grads = backend.loss_gradients(self.model, self.x, self.y)
        squares = {}
        for variable, grad in zip(self.model.trainable_variables, grads):
            group = _group(variable.path)
            squares[group] = squares.get(group, 0.0) + float(np.sum(np.square(grad)))
        bases = {layer.name: layer for layer in _bases(self.model)}
        record = {"grad_norm": {k: float(np.sqrt(v)) for k, v in squares.items()}}
        record["basis_orthogonality_error"] = {
            name: float(ops.convert_to_numpy(shared_basis.orthogonality_penalty(b.kernel)))
            for name, b in bases.items()
        }
        record["basis_row_norm_mean"] = {
            name: float(
                np.linalg.norm(
                    ops.convert_to_numpy(b.kernel).reshape(-1, b.num_filters), axis=0
                ).mean()
            )
            for name, b in bases.items()
        }
        self.history.append(record)


def _bases(model):
    seen = {}
    for layer in model._flatten_layers():
        if isinstance(layer, FilterBasis):
            seen[id(layer)] = layer
    return list(seen.values())


def run(variant, seed, epochs):
    task = TASKS["texture_patches"]
    x, y = task.load("train")
    x_val, y_val = task.load("validation")
    x_test, y_test = task.load("test")
    keras.utils.set_random_seed(seed)
    model = SharedBasisResNet(**VARIANTS[variant])
    task.compile(model, task.optimizer())
    monitor = BlockGradients(x[:256], y[:256])
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        batch_size=task.batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=[monitor],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    test = model.evaluate(x_test, y_test, batch_size=task.batch_size, verbose=0, return_dict=True)
    return {
        "seed": seed,
        "parameters": int(model.count_params()),
        "test_accuracy": float(test["accuracy"]),
        "val_accuracy": [float(v) for v in history.history["val_accuracy"]],
        "seconds_per_epoch": seconds / epochs,
        "epochs": monitor.history,
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), sharey=True)
    groups = sorted({g for runs in results.values() for g in runs[0]["epochs"][0]["grad_norm"]})
    colors = plt.get_cmap("tab20")
    for ax, (variant, runs) in zip(axes, results.items()):
        epochs = runs[0]["epochs"]
        for group in sorted(epochs[0]["grad_norm"]):
            curve = [e["grad_norm"][group] for e in epochs]
            ax.plot(
                np.arange(1, len(curve) + 1),
                curve,
                label=group,
                linestyle="--" if group.endswith("basis") else "-",
                color=colors(groups.index(group) % 20),
            )
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{variant} (seed 0)")
    axes[0].set_ylabel("gradient norm on a fixed batch")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    results = {variant: [] for variant in VARIANTS}
    for seed in range(args.seeds):
        for variant in VARIANTS:
            results[variant].append(run(variant, seed, args.epochs))
            last = results[variant][-1]
            print(
                variant,
                seed,
                last["parameters"],
                last["test_accuracy"],
                round(last["seconds_per_epoch"], 1),
                flush=True,
            )
    summary = {
        variant: {
            "parameters": runs[0]["parameters"],
            "test_accuracy_per_seed": [r["test_accuracy"] for r in runs],
            "test_accuracy_mean": float(np.mean([r["test_accuracy"] for r in runs])),
            "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in runs])),
            "final_grad_norm_seed0": runs[0]["epochs"][-1]["grad_norm"],
            "final_basis_orthogonality_error_seed0": runs[0]["epochs"][-1][
                "basis_orthogonality_error"
            ],
            "final_basis_row_norm_mean_seed0": runs[0]["epochs"][-1]["basis_row_norm_mean"],
        }
        for variant, runs in results.items()
    }
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shared_basis.json").write_text(
        json.dumps(
            {
                "command": f"KERAS_BACKEND={keras.backend.backend()} "
                f"python benchmarks/shared_basis.py --seeds {args.seeds} --epochs {args.epochs}",
                "summary": summary,
                "runs": results,
            },
            indent=1,
        )
        + "\n"
    )
    plot(results, RESULTS / "shared_basis.png")


if __name__ == "__main__":
    main()
