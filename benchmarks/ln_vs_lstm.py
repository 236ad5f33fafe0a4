"""LN-LSTM vs plain LSTM: validation loss per training step, on both zoo tasks.

For each task the zoo's LN-LSTM model and its plain-LSTM twin are trained with
the task's optimizer, batch size and data (as `kzoo train` does), from the same
seed and batch order, and the validation loss is measured every `--every`
steps. Reported: each model's best validation loss, and the number of steps
the LN-LSTM needs to reach the plain LSTM's best (paper: about 60%).

    python benchmarks/ln_vs_lstm.py [--tasks digits chars] [--seeds 0 1 2]

Writes benchmarks/results/ln_vs_lstm.json and ln_vs_lstm.png.
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kzoo import applications  # noqa: E402
from kzoo.zoo.tasks import TASKS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETUPS = {
    # task: (LN model, plain model, task name, steps, evaluate every, val examples)
    "digits": ("lnlstm_digits", "lstm_digits", "digits_rows", 1200, 20, None),
    "chars": ("lnlstm_char_lm", "lstm_char_lm", "stdlib_chars", 860, 43, 1024),
}


def run(model_name, task_name, steps, every, val_examples, seed):
    task = TASKS[task_name]
    x, y = task.load("train")
    x_val, y_val = task.load("validation")
    if val_examples:
        x_val, y_val = x_val[:val_examples], y_val[:val_examples]
    keras.utils.set_random_seed(seed)
    model = applications.get(model_name)
    model.compile(optimizer=task.optimizer(), loss=task.loss)
    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(len(x)) for _ in range(steps * task.batch_size // len(x) + 1)]
    )
    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = order[(step - 1) * task.batch_size : step * task.batch_size]
        model.train_on_batch(x[idx], y[idx])
        if step % every == 0:
            val = model.evaluate(x_val, y_val, batch_size=256, verbose=0)
            curve.append((step, float(val)))
    return {"curve": curve, "seconds": time.perf_counter() - start}


def steps_to_reach(curve, target):
    return next((step for step, loss in curve if loss <= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    out_file = RESULTS / "ln_vs_lstm.json"
    results = json.loads(out_file.read_text()) if out_file.exists() else {}
    results["backend"] = keras.backend.backend()
    for task in args.tasks:
        ln_name, plain_name, task_name, steps, every, val_examples = SETUPS[task]
        runs = []
        for seed in args.seeds:
            ln = run(ln_name, task_name, steps, every, val_examples, seed)
            plain = run(plain_name, task_name, steps, every, val_examples, seed)
            plain_best = min(loss for _, loss in plain["curve"])
            plain_best_step = min(plain["curve"], key=lambda c: c[1])[0]
            ln_steps = steps_to_reach(ln["curve"], plain_best)
            runs.append(
                {
                    "seed": seed,
                    "ln_lstm": ln,
                    "lstm": plain,
                    "lstm_best_val_loss": plain_best,
                    "lstm_best_step": plain_best_step,
                    "ln_lstm_best_val_loss": min(loss for _, loss in ln["curve"]),
                    "ln_lstm_steps_to_lstm_best": ln_steps,
                    "ratio": None if ln_steps is None else ln_steps / plain_best_step,
                }
            )
            print(task, seed, {k: v for k, v in runs[-1].items() if k not in ("ln_lstm", "lstm")})
        results[task] = {
            "task": task_name,
            "steps": steps,
            "every": every,
            "val_examples": val_examples,
            "runs": runs,
        }
        out_file.write_text(json.dumps(results, indent=1) + "\n")
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in SETUPS if t in results]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, r in enumerate(results[task]["runs"]):
            for key, color in (("ln_lstm", "tab:red"), ("lstm", "tab:blue")):
                steps, losses = zip(*r[key]["curve"])
                ax.plot(
                    steps,
                    losses,
                    color=color,
                    alpha=0.8,
                    label=("LN-LSTM" if key == "ln_lstm" else "LSTM") if i == 0 else None,
                )
            ax.axhline(r["lstm_best_val_loss"], color="tab:blue", ls=":", lw=0.8)
        ax.set_title(f"{task} ({results[task]['task']})")
        ax.set_xlabel("training step")
        ax.set_ylabel("validation loss")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ln_vs_lstm.png", dpi=110)


if __name__ == "__main__":
    main()
