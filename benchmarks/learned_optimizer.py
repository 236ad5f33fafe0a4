"""Learned LSTM optimizer vs tuned SGD, RMSprop, Adam and Nesterov (S3, Fig. 4-5).

For each setting, each baseline's learning rate is chosen by grid search on
training problems (best mean final loss), then every optimizer runs on the
same held-out test problems (`meta.TEST_SEED`). The learned optimizers come
from the zoo: `lstm_optimizer_quadratic` for the quadratics and
`lstm_optimizer_digits_mlp` for everything on the digits (the transfer
settings reuse it unchanged).

    KERAS_BACKEND=jax python benchmarks/learned_optimizer.py --settings quadratic
    KERAS_BACKEND=tensorflow python benchmarks/learned_optimizer.py --settings mlp \
        mlp_200_steps mlp_40_units mlp_2_layers mlp_relu cnn

Writes `benchmarks/results/learned_optimizer.json` and
`learned_optimizer_fig4.png` / `learned_optimizer_fig5.png`.

    KERAS_BACKEND=tensorflow python benchmarks/learned_optimizer.py --state-dtypes \
        --settings mlp mlp_200_steps

reruns only the learned optimizer, with a float32 and a bfloat16 state, on
the same test problems and compares its final loss with the stored one
(`benchmarks/results/learned_optimizer_state_dtype.json`): the check that
a change of `LSTMOptimizer`'s implementation left its scores unchanged.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from kzoo.optimizers import LSTMOptimizer
from kzoo.optimizers import meta
from kzoo.optimizers import problems

RESULTS = Path(__file__).parent / "results"
TUNE_SEED = 31_337  # training-distribution problems used for the grid search
RATES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
BASELINES = {
    "SGD": lambda lr: keras.optimizers.SGD(lr),
    "Nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "RMSprop": lambda lr: keras.optimizers.RMSprop(lr),
    "Adam": lambda lr: keras.optimizers.Adam(lr),
}
SETTINGS = {  # name: (problem, learned optimizer preset, horizon)
    "quadratic": (problems.Quadratic, {}, "lstm_optimizer_quadratic", 100),
    "mlp": (problems.DigitsMLP, {}, "lstm_optimizer_digits_mlp", 100),
    "mlp_200_steps": (problems.DigitsMLP, {}, "lstm_optimizer_digits_mlp", 200),
    "mlp_40_units": (problems.DigitsMLP, {"hidden": (40,)}, "lstm_optimizer_digits_mlp", 100),
    "mlp_2_layers": (problems.DigitsMLP, {"hidden": (20, 20)}, "lstm_optimizer_digits_mlp", 100),
    "mlp_relu": (problems.DigitsMLP, {"activation": "relu"}, "lstm_optimizer_digits_mlp", 100),
    "cnn": (problems.DigitsCNN, {}, "lstm_optimizer_digits_mlp", 100),
}


def _final(curves):
    final = curves[-1]
    return float(np.mean(final)) if np.all(np.isfinite(final)) else float("inf")


def tune(factory, problem, tune_problems):
    scores = {
        lr: _final(meta.optimize(factory(lr), problem, TUNE_SEED, tune_problems)) for lr in RATES
    }
    return min(scores, key=scores.get), scores


def summarize(curves):
    final = curves[-1]
    return {
        "mean_curve": curves.mean(axis=1).tolist(),
        "final_mean": float(final.mean()),
        "final_std": float(final.std()),
        "final_median": float(np.median(final)),
        "final_p25_p75": [float(np.percentile(final, 25)), float(np.percentile(final, 75))],
        "diverged": int(np.sum(~np.isfinite(final))),
    }


def run_setting(name, test_problems, tune_problems, tuned_rates):
    family, kwargs, preset, horizon = SETTINGS[name]
    problem = family(**kwargs)
    result = {
        "backend": keras.backend.backend(),
        "problem": problem.name,
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "horizon": horizon,
        "learned_optimizer": preset,
        "optimizers": {},
    }
    start = time.time()
    curves = meta.optimize(
        LSTMOptimizer.from_preset(preset), problem, meta.TEST_SEED, test_problems, horizon
    )
    result["optimizers"]["LSTM"] = summarize(curves)
    for opt_name, factory in BASELINES.items():
        key = (opt_name, problem.name)
        if key not in tuned_rates:
            tuned_rates[key] = tune(factory, problem, tune_problems)
        lr, scores = tuned_rates[key]
        curves = meta.optimize(factory(lr), problem, meta.TEST_SEED, test_problems, horizon)
        result["optimizers"][opt_name] = {"learning_rate": lr, "grid": scores, **summarize(curves)}
    best = min(BASELINES, key=lambda n: result["optimizers"][n]["final_mean"])
    lstm = result["optimizers"]["LSTM"]["final_mean"]
    result["best_baseline"] = best
    result["lstm_over_best_baseline"] = lstm / result["optimizers"][best]["final_mean"]
    result["seconds"] = round(time.time() - start, 1)
    print(
        f"{name}: LSTM {lstm:.4f}, best baseline {best} "
        f"{result['optimizers'][best]['final_mean']:.4f} (ratio "
        f"{result['lstm_over_best_baseline']:.3f})",
        flush=True,
    )
    return result


def rerun_state_dtypes(names, stored, test_problems):
    out = RESULTS / "learned_optimizer_state_dtype.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in names:
        family, kwargs, preset, horizon = SETTINGS[name]
        row = {"backend": keras.backend.backend(), "stored": None}
        if name in stored:
            row["stored"] = stored[name]["optimizers"]["LSTM"]["final_mean"]
        for dtype in ("float32", "bfloat16"):
            optimizer = LSTMOptimizer.from_preset(preset, state_dtype=dtype)
            curves = meta.optimize(
                optimizer, family(**kwargs), meta.TEST_SEED, test_problems, horizon
            )
            row[dtype] = _final(curves)
        results[name] = row
        print(f"{name}: {row}", flush=True)
        out.write_text(json.dumps(results, indent=1))


def plot(results, names, path, log=True):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4))
    for ax, name in zip(np.atleast_1d(axes), names):
        res = results[name]
        for opt_name, r in res["optimizers"].items():
            label = opt_name if opt_name == "LSTM" else f"{opt_name} (lr {r['learning_rate']:g})"
            ax.plot(
                r["mean_curve"],
                "-" if opt_name == "LSTM" else "--",
                label=label,
                linewidth=2 if opt_name == "LSTM" else 1,
            )
        if log:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("mean loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-problems", type=int, default=128)
    parser.add_argument("--tune-problems", type=int, default=32)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument(
        "--state-dtypes",
        action="store_true",
        help="only rerun the learned optimizer with a float32 and a bfloat16 state",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "learned_optimizer.json"
    results = json.loads(out.read_text())["settings"] if out.exists() else {}
    if args.state_dtypes:
        return rerun_state_dtypes(args.settings, results, args.test_problems)
    tuned = {}
    for name in args.settings:
        results[name] = run_setting(name, args.test_problems, args.tune_problems, tuned)
        out.write_text(
            json.dumps(
                {
                    "test_problems": args.test_problems,
                    "tune_problems": args.tune_problems,
                    "rates": RATES,
                    "settings": results,
                },
                indent=1,
            )
        )
    fig4 = [n for n in ("quadratic", "mlp", "mlp_200_steps") if n in results]
    fig5 = [n for n in ("mlp_40_units", "mlp_2_layers", "mlp_relu", "cnn") if n in results]
    if fig4:
        plot(results, fig4, RESULTS / "learned_optimizer_fig4.png")
    if fig5:
        plot(results, fig5, RESULTS / "learned_optimizer_fig5.png")


if __name__ == "__main__":
    main()
