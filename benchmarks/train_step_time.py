"""Train-step time of `LayerNormLSTM` vs `keras.layers.LSTM`, per backend.

Same model around the recurrent layer (the char LM's: embedding 32, 256 units,
softmax over 99 characters; and the digits classifier's: 64 units), same batch,
same optimizer; the median wall time of `train_on_batch` after warm-up.
Each backend runs in its own process.

    python benchmarks/train_step_time.py [--backends tensorflow jax torch]

Writes benchmarks/results/train_step_time.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    # name: (zoo LN model, zoo plain model, batch, sequence length)
    "char_lm_256u_b64_t64": ("lnlstm_char_lm", "lstm_char_lm", 64, 64),
    "digits_64u_b32_t8": ("lnlstm_digits", "lstm_digits", 32, 8),
}


def measure(steps):
    import keras
    import numpy as np

    from kzoo import applications

    timings = {}
    for config, (ln_name, plain_name, batch, length) in CONFIGS.items():
        rng = np.random.default_rng(0)
        row = {}
        for label, name in (("ln_lstm", ln_name), ("lstm", plain_name)):
            keras.utils.set_random_seed(0)
            model = applications.get(name)
            shape = model.inputs[0].shape
            if "int" in str(model.inputs[0].dtype):
                x = rng.integers(2, 99, size=(batch, length)).astype("int32")
                y = rng.integers(2, 99, size=(batch, length)).astype("int32")
            else:
                x = rng.uniform(size=(batch, *shape[1:])).astype("float32")
                y = rng.integers(0, 10, size=(batch,)).astype("int32")
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            for _ in range(5):
                model.train_on_batch(x, y)
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times.append(time.perf_counter() - start)
            row[label] = 1000 * float(np.median(times))
        row["ratio"] = row["ln_lstm"] / row["lstm"]
        timings[config] = row
        print(keras.backend.backend(), config, row, file=sys.stderr)
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.steps)))
        return
    results = {"unit": "ms per train step (median)", "cpu_count": os.cpu_count()}
    for backend in args.backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run(
            [sys.executable, __file__, "--worker", "--steps", str(args.steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_step_time.json").write_text(json.dumps(results, indent=1) + "\n")
    for backend in args.backends:
        for config, row in results[backend].items():
            print(
                f"{backend:10s} {config:24s} LN-LSTM {row['ln_lstm']:8.1f} ms  "
                f"LSTM {row['lstm']:8.1f} ms  ratio {row['ratio']:.2f}"
            )


if __name__ == "__main__":
    main()
