"""DeepO2P vs its first-order twin on the texture patches, over several seeds.

Same trunk, data, optimizer (the zoo task's Adam) and budget; only the pooling
head differs (second-order pooling + LogEig vs global average pooling). Two
trunks: the zoo's (filters 32-64, 16-channel projection: 136-d vs 16-d) and a
small one (filters 8-16, 8-channel projection: 36-d vs 8-d), where the head has
to do more of the work. Reports held-out test accuracy per seed, mean and
spread, the validation-accuracy curves and the time per epoch.

    KERAS_BACKEND=jax python benchmarks/o2p_vs_first_order.py [--seeds 3] [--epochs 10]

Writes benchmarks/results/o2p_vs_first_order.json and .png.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from kzoo.applications import DeepO2P
from kzoo.zoo.tasks import TASKS

RESULTS = Path(__file__).resolve().parent / "results"
TRUNKS = {"zoo": {}, "small": {"filters": (8, 16), "projection": 8}}
HEADS = ("o2p", "first_order")


def run(head, trunk, seed, epochs):
    task = TASKS["texture_patches"]
    x, y = task.load("train")
    x_val, y_val = task.load("validation")
    x_test, y_test = task.load("test")
    keras.utils.set_random_seed(seed)
    model = DeepO2P(head=head, **TRUNKS[trunk])
    task.compile(model, task.optimizer())
    start = time.perf_counter()
    history = model.fit(
        x, y, batch_size=task.batch_size, epochs=epochs, validation_data=(x_val, y_val), verbose=0
    )
    seconds = time.perf_counter() - start
    test = model.evaluate(x_test, y_test, batch_size=task.batch_size, verbose=0, return_dict=True)
    return {
        "seed": seed,
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "val_accuracy": [float(v) for v in history.history["val_accuracy"]],
        "seconds_per_epoch": seconds / epochs,
        "parameters": int(model.count_params()),
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5))
    for ax, (trunk, heads) in zip(np.atleast_1d(axes), results.items()):
        for head, runs in heads.items():
            curves = np.array([r["val_accuracy"] for r in runs])
            epochs = np.arange(1, curves.shape[1] + 1)
            ax.plot(epochs, curves.mean(0), label=f"{head} (mean of {len(runs)} seeds)")
            ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"{trunk} trunk: O2P vs first-order head")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    results = {trunk: {head: [] for head in HEADS} for trunk in TRUNKS}
    for trunk, heads in results.items():
        for seed in range(args.seeds):
            for head in HEADS:
                heads[head].append(run(head, trunk, seed, args.epochs))
                print(
                    trunk,
                    head,
                    json.dumps({k: v for k, v in heads[head][-1].items() if k != "val_accuracy"}),
                    flush=True,
                )
    summary = {
        trunk: {
            head: {
                "test_accuracy_mean": float(np.mean([r["test_accuracy"] for r in runs])),
                "test_accuracy_std": float(np.std([r["test_accuracy"] for r in runs])),
                "test_accuracy_min": float(np.min([r["test_accuracy"] for r in runs])),
                "test_accuracy_max": float(np.max([r["test_accuracy"] for r in runs])),
                "parameters": runs[0]["parameters"],
                "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in runs])),
            }
            for head, runs in heads.items()
        }
        for trunk, heads in results.items()
    }
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "o2p_vs_first_order.json").write_text(
        json.dumps(
            {
                "command": f"KERAS_BACKEND={keras.backend.backend()} python "
                f"benchmarks/o2p_vs_first_order.py --seeds {args.seeds} --epochs {args.epochs}",
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
        + "\n"
    )
    plot(results, RESULTS / "o2p_vs_first_order.png")


if __name__ == "__main__":
    main()
