"""Bad inputs per layer and backend: how many get a clear answer.

Runs every case of `tests/bad_inputs.py` (the same cases and judge as
`tests/test_bad_inputs.py`) on every public layer, eagerly for each of
`--seeds` placements of the bad value and batch sizes 1-3, plus the value
contracts inside a compiled `predict` and bad gradients given to
`LSTMOptimizer`, and counts the outcomes: clear error / non-finite output
that propagates / accepted answer / cryptic error / silent (a plausible
answer to an input the layer cannot honour). A crash would end the run.

    KERAS_BACKEND=jax python benchmarks/reliability.py [--label after] [--seeds 5]
    python benchmarks/reliability.py --report     # table + PNG from the JSON

Merges its counts into `benchmarks/results/reliability.json` under
`label/backend`; `--report` writes `reliability.png` and prints the table
for BENCHMARKS.md. Run with `PYTHONPATH=<an older checkout>` and another
`--label` to measure an earlier kzoo (layers it lacks are skipped).
"""

import argparse
import collections
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
OUTCOMES = ("clear_error", "propagated", "ok", "cryptic_error", "silent")


def measure(seeds):
    import importlib.util

    import keras

    # By path: `kzoo` itself may come from an older checkout on PYTHONPATH.
    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "tests" / "bad_inputs.py")
    bad_inputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bad_inputs)

    counts, examples = {}, collections.defaultdict(list)
    for name in bad_inputs.SPECS:
        try:
            layer = bad_inputs.built_layer(name)
        except AttributeError:  # an older kzoo without this layer
            continue
        tally = collections.Counter()
        for case in bad_inputs.cases(name):
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                batch = 1 + seed % 3
                example = int(rng.integers(batch))
                inputs = bad_inputs.corrupt(
                    name, case, rng, batch=batch, example=example, position=float(rng.uniform())
                )
                outcome = bad_inputs.judge(layer, case, lambda: layer(inputs), example=example)
                tally[outcome] += 1
                if outcome in bad_inputs.BAD:
                    examples[name].append(f"{case}: {outcome}")
        for case in ("nan",) + bad_inputs.SPECS[name].extra_cases:
            fresh = bad_inputs.built_layer(name)
            inputs = bad_inputs.corrupt(name, case, np.random.default_rng(0), batch=2, example=1)
            outcome = bad_inputs.judge(
                fresh, case, lambda: bad_inputs.compiled_predict(fresh, inputs), example=1
            )
            tally[outcome] += 1
            if outcome in bad_inputs.BAD:
                examples[name].append(f"compiled {case}: {outcome}")
        counts[name] = {k: tally[k] for k in OUTCOMES}
    tally = collections.Counter(bad_inputs.judge_optimizer(c) for c in bad_inputs.OPTIMIZER_CASES)
    counts["LSTMOptimizer"] = {k: tally[k] for k in OUTCOMES}
    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "counts": counts,
        "failures": {k: sorted(set(v)) for k, v in examples.items()},
    }


def report():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads((RESULTS / "reliability.json").read_text())
    labels = list(results)
    fig, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 4), squeeze=False)
    colors = dict(zip(OUTCOMES, ("tab:green", "tab:blue", "tab:gray", "tab:orange", "tab:red")))
    for ax, label in zip(axes[0], labels):
        backends = list(results[label])
        bottom = np.zeros(len(backends))
        for outcome in OUTCOMES:
            values = np.array(
                [sum(c[outcome] for c in results[label][b]["counts"].values()) for b in backends]
            )
            ax.bar(backends, values, bottom=bottom, color=colors[outcome], label=outcome)
            bottom += values
        ax.set_title(f"{label}: outcomes of {int(bottom[0])} bad inputs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "reliability.png", dpi=100)
    print(
        "| run | backend | layers | inputs | clear error | NaN propagated | accepted "
        "| cryptic | silent |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label in labels:
        for backend, run in results[label].items():
            totals = {o: sum(c[o] for c in run["counts"].values()) for o in OUTCOMES}
            print(
                f"| {label} | {backend} | {len(run['counts'])} | {sum(totals.values())} | "
                + " | ".join(str(totals[o]) for o in OUTCOMES)
                + " |"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report()
        return
    run = measure(args.seeds)
    out = RESULTS / "reliability.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault(args.label, {})[run["backend"]] = run
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    totals = {o: sum(c[o] for c in run["counts"].values()) for o in OUTCOMES}
    print(run["backend"], totals)
    for name, failures in run["failures"].items():
        print(f"  {name}: {', '.join(failures)}")


if __name__ == "__main__":
    main()
