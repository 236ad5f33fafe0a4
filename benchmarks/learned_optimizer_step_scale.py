"""A general learned optimizer with its step scale tuned per task, like the baselines.

`benchmarks/learned_optimizer_general.py` runs the learned optimizers
untuned. This asks what is left when its one scalar, `learning_rate` (a
factor on the learned update), is tuned per held-out task exactly as the
baselines' rates are: a grid of `SCALES` on the tuning problems
(`TUNE_SEED`), the best mean final loss, then the test seeds at that scale.
If the tuned scale closes the gap to the best tuned baseline, the learned
steps are the wrong size; if it does not, the learned direction is what
costs.

    KERAS_BACKEND=jax python benchmarks/learned_optimizer_step_scale.py

Reads the baselines from `benchmarks/results/learned_optimizer_general.json`
(run that first, with the same settings) and writes
`benchmarks/results/learned_optimizer_step_scale.json` and `.png`.

`--training` asks the same of the preset's own meta-training families: the
validation problems of its zoo entry (`meta.VALIDATION_SEED`), run for the
held-out horizon with the update times each of `--scales`, scored per family
by `MetaTrainer.score`'s final term (lower is better). If the families agree
on one factor other than 1, meta-training left the step off; if they
disagree, the preset does not adapt its step to the problem. It writes
`learned_optimizer_step_scale_training.json` and `.png`.
"""

import argparse
import json
import time

import keras
import numpy as np
from learned_optimizer_general import HELD_OUT
from learned_optimizer_general import OUT as GENERAL_OUT
from learned_optimizer_general import RESULTS
from learned_optimizer_general import _best
from learned_optimizer_general import run_seeds
from learned_optimizer_general import tune

from kzoo.optimizers import LSTMOptimizer
from kzoo.optimizers import learned as learned_lib
from kzoo.optimizers import meta
from kzoo.zoo import learned_optimizers
from kzoo.zoo import registry

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
OUT = RESULTS / "learned_optimizer_step_scale.json"
TRAINING_OUT = RESULTS / "learned_optimizer_step_scale_training.json"


def scaled(phi, factor):
    """`phi` of an `inputs="moments"` network whose updates are `factor`
    times as large: its direction output `d` scaled, its step-size output
    untouched."""
    phi = [np.array(p) for p in phi]
    phi[-2][:, 0] *= factor
    phi[-1][0] *= factor
    return phi


def training_families(preset, scales, horizon, problems_per_family):
    """The preset's final validation score per family at each scale."""
    trainer = learned_optimizers.meta_trainer(registry.entry(preset))
    phi, architecture = learned_lib.load_meta_parameters(preset)
    if architecture["inputs"] != "moments":
        raise SystemExit(f"{preset}: --training needs an inputs='moments' preset")
    scores = {}
    for factor in scales:
        start = time.time()
        curves = trainer.run_all(
            scaled(phi, factor), meta.VALIDATION_SEED, problems_per_family, horizon
        )
        scores[str(factor)] = {
            "score": trainer.score(curves)[0],
            "families": {name: trainer.score({name: c})[0] for name, c in curves.items()},
        }
        print(f"scale {factor:g}: {scores[str(factor)]['score']:.4f} ({time.time() - start:.0f} s)")
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="lstm_optimizer_general_rescaled")
    parser.add_argument("--tasks", nargs="*", default=list(HELD_OUT))
    parser.add_argument("--training", action="store_true", help="score the training families")
    parser.add_argument("--scales", nargs="*", type=float, default=[0.5, 1.0, 2.0, 4.0])
    args = parser.parse_args()
    general = json.loads(GENERAL_OUT.read_text())
    settings = general["settings"]
    if args.training:
        scores = training_families(
            args.preset, args.scales, settings["horizon"], settings["problems_per_seed"]
        )
        TRAINING_OUT.write_text(
            json.dumps(
                {
                    "preset": args.preset,
                    "backend": keras.backend.backend(),
                    "horizon": settings["horizon"],
                    "scales": scores,
                },
                indent=1,
            )
        )
        return plot_training(args.preset, scores, TRAINING_OUT.with_suffix(".png"))
    if settings["backend"] != keras.backend.backend():
        raise SystemExit(f"the baselines were measured on {settings['backend']}; run on that")
    stored = json.loads(OUT.read_text()) if OUT.exists() else {}
    results = stored.get("tasks", {}) if stored.get("preset") == args.preset else {}
    for name in args.tasks:
        start = time.time()
        problem = HELD_OUT[name]()
        base = general["tasks"][name]["baselines"]
        learned = general["tasks"][name]["learned"].get(args.preset)
        if learned is None:
            raise SystemExit(f"{args.preset} is not scored on {name} in {GENERAL_OUT.name}")
        grid, scale = tune(
            lambda s: LSTMOptimizer.from_preset(args.preset, learning_rate=s),
            problem,
            settings["horizon"],
            settings["tune_problems"],
            SCALES,
        )
        tuned = run_seeds(
            lambda: LSTMOptimizer.from_preset(args.preset, learning_rate=scale),
            problem,
            settings["seeds"],
            settings["problems_per_seed"],
            settings["horizon"],
        )
        best = _best(base, "tuned")
        results[name] = {
            "grid": {str(k): v for k, v in grid.items()},
            "scale": scale,
            "untuned": learned["final_mean"] / base[best]["final_mean"],
            "tuned": tuned["final_mean"] / base[best]["final_mean"],
            "tuned_final_mean": tuned["final_mean"],
            "tuned_final_std": tuned["final_std"],
            "diverged_problems": tuned["diverged_problems"],
            "best_tuned": best,
            "adam_tuned": base["Adam tuned"]["final_mean"] / base[best]["final_mean"],
            "seconds": round(time.time() - start, 1),
        }
        row = results[name]
        print(
            f"{name}: scale {scale:g}, {row['untuned']:.2f}x -> {row['tuned']:.2f}x {best} "
            f"(tuned Adam {row['adam_tuned']:.2f}x)",
            flush=True,
        )
        OUT.write_text(
            json.dumps({"preset": args.preset, "settings": settings, "tasks": results}, indent=1)
        )
    names = [n for n in HELD_OUT if n in results]
    for key in ("untuned", "tuned", "adam_tuned"):
        geo = float(np.exp(np.mean([np.log(results[n][key]) for n in names])))
        print(f"geometric mean over {len(names)} tasks, {key}: {geo:.2f}x")
    plot(args.preset, {n: results[n] for n in names}, OUT.with_suffix(".png"))


def plot(preset, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, row in results.items():
        scales = [float(s) for s in row["grid"]]
        losses = np.array(list(row["grid"].values()))
        ax.loglog(scales, losses / losses[scales.index(1.0)], "o-", label=name)
    ax.set(xlabel="learning_rate (factor on the learned update)")
    ax.set(ylabel="final loss / final loss at 1 (tuning problems)")
    ax.set_ylim(0.2, 10)  # the blow-ups (up to 10^7) leave through the top
    ax.set_title(f"{preset}: step scale tuned per task", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(preset, scores, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [float(s) for s in scores]
    families = list(next(iter(scores.values()))["families"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in families:
        values = [scores[s]["families"][name] for s in scores]
        ax.semilogx(scales, values, ".-", color="0.7", lw=0.8)
    ax.semilogx(scales, [scores[s]["score"] for s in scores], "o-", color="C3", lw=2, label="mean")
    ax.set(xlabel="factor on the learned update", ylabel="log(final / initial loss + floor)")
    ax.set_title(f"{preset} on its training families (grey: one family each)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
