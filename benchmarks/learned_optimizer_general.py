"""The general learned optimizer on held-out tasks vs default and tuned baselines.

Held-out split (never used in meta-training; the training split is
`kzoo.optimizers.problems.general_training_distribution`, both documented in
`docs/learned_optimizer_general.md`):

- `friedman_mlp_relu`: a ReLU MLP (32) regressing scikit-learn's Friedman #1
  data (10 features, noise 1), minibatch 64 (dataset never seen);
- `texture_mlp_relu`: a two-layer ReLU MLP (64, 64) on the texture patches at
  8x8, minibatch 128 (dataset never seen, wider net);
- `texture_cnn_relu`: the small ReLU CNN on the texture patches at 8x8,
  minibatch 64 (dataset never seen);
- `texture_mlp_elu_3_layers`: a three-layer ELU MLP (32, 32, 32) on the
  texture patches at 8x8, minibatch 128 (dataset, activation and depth never
  seen);
- `diabetes_mlp_tanh`: a tanh MLP (16) regressing scikit-learn's diabetes
  target, minibatch 32 (dataset never seen).

Every task starts from Glorot-variance Gaussian weights (scale 1). For each
task, each baseline (SGD, Nesterov momentum 0.9, RMSprop, Adam) runs at the
Keras default learning rate and at the rate tuned for that task on separate
problems (`TUNE_SEED`, a grid of `RATES`, best mean final loss). The learned
optimizers run untuned (`learning_rate=1`). All optimizers see the same
initializations and minibatches: `--seeds` test seeds of `--problems`
problems each. The final loss is the mean minibatch loss over the last
`FINAL_WINDOW` steps; a run that is not finite there counts as diverged.

    KERAS_BACKEND=jax python benchmarks/learned_optimizer_general.py

writes `benchmarks/results/learned_optimizer_general.json` and
`learned_optimizer_general.png`. The baselines (tuning included) are kept in
the JSON and reused; `--retune` recomputes them. `--learned` names the
learned-optimizer presets to score; `--checkpoint DIR ...` also scores the
best `phi` of meta-training checkpoints (`<zoo>/.checkpoints/<name>`, under
the architecture they record). The baselines are `learned_optimizer.py`'s.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
from learned_optimizer import BASELINES

from kzoo.optimizers import LSTMOptimizer
from kzoo.optimizers import learned
from kzoo.optimizers import meta
from kzoo.optimizers import problems

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "learned_optimizer_general.json"
TUNE_SEED = 31_337
RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
FINAL_WINDOW = 50
DEFAULT_RATES = {"SGD": 0.01, "Nesterov": 0.01, "RMSprop": 0.001, "Adam": 0.001}
HELD_OUT = {
    "friedman_mlp_relu": lambda: problems.MLP("friedman", (32,), "relu", 64),
    "texture_mlp_relu": lambda: problems.MLP("texture_patches_8x8", (64, 64), "relu", 128),
    "texture_cnn_relu": lambda: problems.CNN("texture_patches_8x8", 8, "relu", 64),
    "texture_mlp_elu_3_layers": lambda: problems.MLP(
        "texture_patches_8x8", (32, 32, 32), "elu", 128
    ),
    "diabetes_mlp_tanh": lambda: problems.MLP("diabetes", (16,), "tanh", 32),
}
GENERAL = "lstm_optimizer_general"


def _best(baselines, kind):
    """The baseline (`"default"` or `"tuned"`) with the lowest mean final loss."""
    names = [k for k in baselines if k.endswith(kind)]
    return min(names, key=lambda k: baselines[k]["final_mean"])


def _curve_array(row):
    return np.array([np.nan if v is None else v for v in row["mean_curve_every_10"]])


def final_loss(curves):
    """Mean over problems of the last `FINAL_WINDOW` losses; inf if diverged."""
    tail = curves[-FINAL_WINDOW:]
    return float(tail.mean()) if np.all(np.isfinite(tail)) else float("inf")


def _curve(curves):
    mean = curves.mean(axis=1)
    return [float(v) if np.isfinite(v) else None for v in mean[::10]]


def run_seeds(make_optimizer, problem, seeds, num_problems, horizon):
    finals, curves = [], []
    for seed in seeds:
        c = meta.optimize(make_optimizer(), problem, seed, num_problems, horizon)
        finals.append(final_loss(c))
        curves.append(c)
    curves = np.concatenate(curves, axis=1)
    return {
        "final_per_seed": finals,
        "final_mean": float(np.mean(finals)),
        "final_std": float(np.std(finals)),
        "diverged_problems": int(np.sum(~np.isfinite(curves[-1]))),
        "mean_curve_every_10": _curve(curves),
    }


def tune(factory, problem, horizon, tune_problems, rates=RATES):
    """`factory`'s final loss at each rate on the tuning problems, and the best rate."""
    grid = {
        lr: final_loss(meta.optimize(factory(lr), problem, TUNE_SEED, tune_problems, horizon))
        for lr in rates
    }
    return grid, min(grid, key=grid.get)


def baselines(problem, seeds, num_problems, horizon, tune_problems):
    out = {}
    for name, factory in BASELINES.items():
        grid, tuned = tune(factory, problem, horizon, tune_problems)
        out[f"{name} default"] = {
            "learning_rate": DEFAULT_RATES[name],
            **run_seeds(
                lambda: factory(DEFAULT_RATES[name]), problem, seeds, num_problems, horizon
            ),
        }
        out[f"{name} tuned"] = {
            "learning_rate": tuned,
            "grid": {str(k): v for k, v in grid.items()},
            **run_seeds(lambda: factory(tuned), problem, seeds, num_problems, horizon),
        }
        print(
            f"  {name}: default {out[f'{name} default']['final_mean']:.4f}, tuned lr {tuned:g} "
            f"{out[f'{name} tuned']['final_mean']:.4f}",
            flush=True,
        )
    return out


def compare(result):
    """The issue's criteria for each learned optimizer on one task."""
    base = result["baselines"]
    best_tuned = _best(base, "tuned")
    adam = _curve_array(base["Adam default"])
    for row in result["learned"].values():
        curve = _curve_array(row)
        row["over_best_tuned"] = row["final_mean"] / base[best_tuned]["final_mean"]
        row["best_tuned"] = best_tuned
        row["beats_every_default"] = all(
            row["final_mean"] < base[k]["final_mean"] for k in base if k.endswith("default")
        )
        ahead = curve[1:] <= adam[1:]  # the first point is the shared initial loss
        row["ahead_of_default_adam_fraction"] = float(np.mean(ahead))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6))
    for ax, name in zip(np.atleast_1d(axes), names):
        res = results[name]
        base = res["baselines"]
        best = _best(base, "tuned")
        lines = {**res["learned"], "Adam default": base["Adam default"], best: base[best]}
        for label, row in lines.items():
            curve = _curve_array(row)
            lr = row.get("learning_rate")
            ax.plot(
                np.arange(len(curve)) * 10,
                curve,
                "-" if label in res["learned"] else "--",
                label=label + (f" ({lr:g})" if lr else ""),
            )
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("mean minibatch loss")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results):
    """The BENCHMARKS.md table: mean final loss (std over seeds) per task."""
    learned = [k for k in next(iter(results.values()))["learned"]]
    columns = [*learned, "Adam default", "best default", "best tuned"]
    lines = ["| task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, res in results.items():
        base = res["baselines"]
        best_default, best_tuned = _best(base, "default"), _best(base, "tuned")
        cells = []
        for label in learned:
            row = res["learned"][label]
            cells.append(
                f"{row['final_mean']:.3g} ± {row['final_std']:.2g} ({row['over_best_tuned']:.2f}×)"
            )
        cells.append(f"{base['Adam default']['final_mean']:.3g}")
        cells.append(f"{base[best_default]['final_mean']:.3g} ({best_default.split()[0]})")
        tuned = base[best_tuned]
        cells.append(
            f"{tuned['final_mean']:.3g} ({best_tuned.split()[0]} {tuned['learning_rate']:g})"
        )
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _learned_optimizers(args):
    makers = {name: (lambda n=name: LSTMOptimizer.from_preset(n)) for name in args.learned}
    for checkpoint in args.checkpoint or []:
        state = json.loads((Path(checkpoint) / meta.CHECKPOINT_STATE).read_text())
        settings = {**learned.OPTIONAL_ARCHITECTURE_KEYS, **state["settings"]}
        architecture = {k: settings[k] for k in learned.ARCHITECTURE_KEYS}
        with np.load(Path(checkpoint) / meta.CHECKPOINT_ARRAYS) as arrays:
            size = sum(name.startswith("best_phi_") for name in arrays.files)
            phi = [arrays[f"best_phi_{i}"] for i in range(size)]
        best = int(np.argmin(state["history"]["validation_final_loss"])) + 1
        label = f"checkpoint {Path(checkpoint).name} (best epoch {best} of {state['epoch']})"
        makers[label] = lambda phi=phi, a=architecture: LSTMOptimizer(weights=phi, **a)
    return makers


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(HELD_OUT))
    parser.add_argument("--learned", nargs="*", default=[GENERAL])
    parser.add_argument(
        "--checkpoint", nargs="*", help="also score these meta-training checkpoints' best phi"
    )
    parser.add_argument("--horizon", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--tune-problems", type=int, default=8)
    parser.add_argument("--retune", action="store_true", help="recompute the baselines")
    parser.add_argument("--table", action="store_true", help="print BENCHMARKS.md's table")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stored = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.table:
        return print(table({n: stored["tasks"][n] for n in HELD_OUT if n in stored["tasks"]}))
    results = {k: v for k, v in stored.get("tasks", {}).items() if k in HELD_OUT}
    seeds = [meta.TEST_SEED + i for i in range(args.seeds)]
    settings = {
        "backend": keras.backend.backend(),
        "horizon": args.horizon,
        "seeds": seeds,
        "problems_per_seed": args.problems,
        "tune_seed": TUNE_SEED,
        "tune_problems": args.tune_problems,
        "rates": RATES,
        "final_window": FINAL_WINDOW,
    }
    if stored and stored.get("settings") != json.loads(json.dumps(settings)):
        args.retune = True  # other seeds or horizon: the stored baselines do not apply
        results = {}
    # Read once: a checkpoint that a running meta-training rewrites scores one phi on every task.
    learned_optimizers = _learned_optimizers(args)
    for name in args.tasks:
        problem = HELD_OUT[name]()
        print(f"{name} ({problem.name})", flush=True)
        start = time.time()
        result = results.get(name, {"problem": problem.name, "learned": {}})
        if args.retune or "baselines" not in result:
            result["baselines"] = baselines(
                problem, seeds, args.problems, args.horizon, args.tune_problems
            )
        # A checkpoint's row is kept only until the next run of the task.
        result["learned"] = {
            k: v for k, v in result["learned"].items() if not k.startswith("checkpoint")
        }
        for label, make in learned_optimizers.items():
            result["learned"][label] = run_seeds(make, problem, seeds, args.problems, args.horizon)
        compare(result)
        for label, row in result["learned"].items():
            print(
                f"  {label}: {row['final_mean']:.4f} = {row['over_best_tuned']:.2f}x "
                f"{row['best_tuned']}; beats every default: {row['beats_every_default']}; "
                f"ahead of default Adam {row['ahead_of_default_adam_fraction']:.0%} of the run",
                flush=True,
            )
        result["seconds"] = round(time.time() - start, 1)
        results[name] = result
        OUT.write_text(json.dumps({"settings": settings, "tasks": results}, indent=1))
    plot(
        {n: results[n] for n in HELD_OUT if n in results}, RESULTS / "learned_optimizer_general.png"
    )


if __name__ == "__main__":
    main()
