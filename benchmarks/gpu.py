"""The #18 speed comparisons on a GPU machine, in one run of under 10 minutes.

Each part runs per backend in its own process (with a time limit; a part
that fails or runs out of time is recorded as such and the others go on):

- `rnn`: train-step time of `LayerNormLSTM`/`LayerNormGRU` (both input modes)
  vs `keras.layers.LSTM`/`GRU` (cuDNN where the backend has it), at the char
  LM and digits sizes (`train_step_time.py`'s models);
- `walk`: one random-walk step (stencil, 128x128, R = 5, 21 classes) against
  scipy's CSR step and the 10-iteration dense CRF, both on the CPU
  (`random_walk_runtime.py`'s problem);
- `optimizer`: `LSTMOptimizer` (float32 and bfloat16 state) vs Adam inside
  `fit` on `learned_optimizer_cost.py`'s three models (the two MLPs and the
  texture ResNet), with the arithmetic bound;
- `serving` (TensorFlow): every zoo preset exported as for TF Serving, its
  `serving_default` latency (loaded SavedModel) vs `predict_on_batch` of the
  Keras model, at batch 1 and 64.

    python benchmarks/gpu.py                 # on the GPU machine
    python benchmarks/gpu.py --quick --parts rnn walk   # a smoke run (any machine)

Without TensorFlow (a GPU image with JAX and PyTorch only), the parent
process needs another Keras backend, and the TensorFlow parts are left out:

    KERAS_BACKEND=jax python benchmarks/gpu.py --parts rnn walk optimizer \
        --backends jax torch

Writes benchmarks/results/gpu.json and the table between the `gpu:begin` and
`gpu:end` markers of BENCHMARKS.md (not with --quick, and only when a GPU
was found, unless --allow-cpu).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from random_walk_runtime import median_ms  # noqa: E402  (a sibling benchmark script)

RESULTS = HERE / "results"
BACKENDS = ("tensorflow", "jax", "torch")
PARTS = ("rnn", "walk", "optimizer", "serving")
BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"


def _device():
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else "CPU"
    if backend == "jax":
        import jax

        return str(jax.devices()[0])
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def part_rnn(quick):
    import train_step_time

    return train_step_time.measure(5 if quick else 20)


def part_walk(quick):
    import random_walk_runtime

    size = 32 if quick else 128
    result = random_walk_runtime.measure_backend(size, 5)
    return {"size": size, **result}


def part_optimizer(quick):
    import learned_optimizer_cost

    names = learned_optimizer_cost.MODELS[:1] if quick else learned_optimizer_cost.MODELS
    if importlib.util.find_spec("tensorflow") is None:
        # The zoo's applications import keras-cv, which needs TensorFlow.
        names = [n for n in names if not n.startswith("resnet")]
    return learned_optimizer_cost.measure("default", names)


def part_serving(quick):
    import keras
    import tensorflow as tf

    from kzoo import zoo
    from kzoo.zoo import models
    from kzoo.zoo import registry

    names = zoo.list_entries(kind="model", pretrained=True)
    if quick:
        names = names[:2]
    runs = 5 if quick else 20
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            item = registry.entry(name)
            path = models.export(item, tmp)
            serve = tf.saved_model.load(str(path)).signatures["serving_default"]
            model = models.get(name, weights="pretrained")
            sample = models.sample_inputs(name)
            row = {}
            for batch in (1, 64):
                x = np.repeat(sample, -(-batch // len(sample)), axis=0)[:batch]
                feed = {model.inputs[0].name: tf.constant(x)}
                row[f"saved_model_ms_batch{batch}"] = median_ms(
                    lambda: [v.numpy() for v in serve(**feed).values()], runs
                )
                row[f"predict_ms_batch{batch}"] = median_ms(
                    lambda: keras.tree.map_structure(np.asarray, model.predict_on_batch(x)), runs
                )
            rows[name] = row
            print(name, row, file=sys.stderr, flush=True)
    return rows


def _versions():
    import keras

    backend = keras.backend.backend()
    return {"keras": keras.__version__, backend: importlib.import_module(backend).__version__}


def _worker(part, quick):
    result = globals()[f"part_{part}"](quick)
    print(json.dumps({"device": _device(), "versions": _versions(), "result": result}))


def _run(part, backend, quick, timeout):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, __file__, "--worker", part] + (["--quick"] if quick else [])
    start = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past {timeout} s"}
    seconds = round(time.perf_counter() - start, 1)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        return {"error": lines[-1], "seconds": seconds}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": seconds}


def _reference(quick):
    """scipy's CSR step and the dense CRF on the CPU (the walk's references)."""
    import random_walk_runtime

    return random_walk_runtime.measure_reference(32 if quick else 128, 5)


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def _ran(part):
    """{backend: result} of the backends whose run of `part` finished."""
    return {b: part[b]["result"] for b in BACKENDS if "result" in part.get(b, {})}


def markdown(results):
    """The GPU rows of BENCHMARKS.md, from `results`."""
    lines = [f"Device: {results['device']}; `python benchmarks/gpu.py` ({results['date']}).", ""]
    rnn = _ran(results["rnn"])
    if rnn:
        lines += [
            "| backend | layer / size | Keras ms | LN in loop ms (×) | LN precomputed ms (×) |",
            "|---|---|---|---|---|",
        ]
        for backend, rows in rnn.items():
            for key, row in rows.items():
                lines.append(
                    f"| {backend} | {key} | {_fmt(row['keras'])} | {_fmt(row['ln_in_loop'])} "
                    f"({_fmt(row['ratio_ln_in_loop'])}) | {_fmt(row['ln_precomputed'])} "
                    f"({_fmt(row['ratio_ln_precomputed'])}) |"
                )
        lines.append("")
    reference = results.get("walk_reference", {})
    walk = _ran(results["walk"])
    if walk:
        scipy_ms = reference.get("scipy_csr_step_ms")
        crf_ms = reference.get("dense_crf_10_iterations_ms")
        lines += [
            f"Random-walk step vs scipy CSR ({_fmt(scipy_ms)} ms, CPU) and the dense CRF "
            f"({_fmt(crf_ms, 1)} ms, CPU):",
            "",
            "| backend | stencil step ms | × scipy | CRF / step |",
            "|---|---|---|---|",
        ]
        for backend, row in walk.items():
            step = row.get("stencil_step_ms")
            ratio = step / scipy_ms if step and scipy_ms else None
            speedup = crf_ms / step if step and crf_ms else None
            lines.append(f"| {backend} | {_fmt(step)} | {_fmt(ratio)} | {_fmt(speedup, 1)} |")
        lines.append("")
    optimizer = _ran(results["optimizer"])
    if optimizer:
        lines += [
            "| backend | model | LSTMOptimizer ms | bfloat16 state ms | Adam ms | ratio | bound |",
            "|---|---|---|---|---|---|---|",
        ]
        for backend, rows in optimizer.items():
            for model, row in rows.items():
                if "Adam" not in row:
                    continue
                adam = row["Adam"]["median_step_ms"]
                lstm = row["LSTM"]["median_step_ms"]
                bf16 = row.get("LSTM_bfloat16", {}).get("median_step_ms")
                lines.append(
                    f"| {backend} | {model} | {_fmt(lstm)} | {_fmt(bf16)} | {_fmt(adam)} | "
                    f"{_fmt(lstm / adam)} | {_fmt(row.get('arithmetic_bound'))} |"
                )
        lines.append("")
    serving = results["serving"].get("tensorflow", {}).get("result", {})
    if serving:
        lines += [
            "| export | SavedModel ms, batch 1 / 64 | `predict_on_batch` ms, batch 1 / 64 |",
            "|---|---|---|",
        ]
        for name, row in serving.items():
            lines.append(
                f"| `{name}` | {_fmt(row['saved_model_ms_batch1'])} / "
                f"{_fmt(row['saved_model_ms_batch64'])} | {_fmt(row['predict_ms_batch1'])} / "
                f"{_fmt(row['predict_ms_batch64'])} |"
            )
        lines.append("")
    failed = [
        f"{part}/{backend}: {run['error']}"
        for part in PARTS
        for backend, run in results.get(part, {}).items()
        if "error" in run
    ]
    if failed:
        lines += ["Failed or out of time: " + "; ".join(map(str, failed)), ""]
    return "\n".join(lines)


def write_benchmarks_md(text, path=HERE.parent / "BENCHMARKS.md"):
    document = path.read_text()
    start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
    path.write_text(document[:start] + "\n" + text + "\n" + document[end:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no BENCHMARKS.md")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="write BENCHMARKS.md without a GPU"
    )
    parser.add_argument("--timeout", type=int, default=150, help="seconds per part and backend")
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.quick)
        return
    results = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("gpu_quick.json" if args.quick else "gpu.json")
    for part in PARTS:
        results[part] = {}
        if part not in args.parts:
            continue
        for backend in ("tensorflow",) if part == "serving" else args.backends:
            results[part][backend] = _run(part, backend, args.quick, args.timeout)
            print(part, backend, json.dumps(results[part][backend])[:300], file=sys.stderr)
            out.write_text(json.dumps(results, indent=1) + "\n")  # kept if the run is cut short
    if "walk" in args.parts:
        results["walk_reference"] = _reference(args.quick)
    devices = {run["device"] for part in PARTS for run in results[part].values() if "device" in run}
    results["device"] = ", ".join(sorted(devices)) or "unknown"
    gpu = any(d != "CPU" and "cpu" not in d.lower() for d in devices)
    out.write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    print(text)
    if not args.quick and (gpu or args.allow_cpu):
        write_benchmarks_md(text)
    elif not args.quick:
        print("No GPU found: BENCHMARKS.md left as it is (--allow-cpu writes it).", file=sys.stderr)


if __name__ == "__main__":
    main()
