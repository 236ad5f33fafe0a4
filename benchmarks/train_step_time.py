"""Train-step time of kzoo's LN recurrent layers vs `keras.layers.LSTM`/`GRU`.

The zoo's two recurrent models (the char LM: embedding 32, 256 units, softmax
over the character ids; the digits classifier: 8 rows of 8 pixels, 64 units,
10 classes) with each recurrent layer in turn: `keras.layers.LSTM`,
`LayerNormLSTM` with its input projection computed inside the loop
(`precompute_inputs=False`) and for the whole sequence before it
(`precompute_inputs=True`), and the same for `keras.layers.GRU` and
`LayerNormGRU`. Same batch, Adam; the median wall time of `train_on_batch`
after warm-up. Each backend runs in its own process.

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
    # name: (units, batch, sequence length, input: vocabulary size or features)
    "char_lm_256u_b64_t64": (256, 64, 64, "chars"),
    "digits_64u_b32_t8": (64, 32, 8, 8),
}
VARIANTS = ("keras", "ln_in_loop", "ln_precomputed")


def _layer(family, variant, units, return_sequences):
    import keras

    from kzoo import layers

    if variant == "keras":
        return getattr(keras.layers, family)(units, return_sequences=return_sequences)
    layer_cls = {"LSTM": layers.LayerNormLSTM, "GRU": layers.LayerNormGRU}[family]
    return layer_cls(
        units,
        return_sequences=return_sequences,
        precompute_inputs=variant == "ln_precomputed",
    )


def _model(family, variant, units, length, source):
    import keras

    from kzoo.datasets import stdlib_text

    if source == "chars":
        vocab = stdlib_text.VOCAB_SIZE
        inputs = keras.Input((length,), dtype="int32")
        x = keras.layers.Embedding(vocab, 32)(inputs)
        x = _layer(family, variant, units, True)(x)
        return keras.Model(inputs, keras.layers.Dense(vocab, activation="softmax")(x)), vocab
    inputs = keras.Input((length, source))
    x = _layer(family, variant, units, False)(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)), None


def measure(steps):
    import keras
    import numpy as np

    timings = {}
    for config, (units, batch, length, source) in CONFIGS.items():
        rng = np.random.default_rng(0)
        for family in ("LSTM", "GRU"):
            row = {}
            for variant in VARIANTS:
                keras.utils.set_random_seed(0)
                model, vocab = _model(family, variant, units, length, source)
                if vocab:
                    x = rng.integers(2, vocab, size=(batch, length)).astype("int32")
                    y = rng.integers(2, vocab, size=(batch, length)).astype("int32")
                else:
                    x = rng.uniform(size=(batch, length, source)).astype("float32")
                    y = rng.integers(0, 10, size=(batch,)).astype("int32")
                model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
                for _ in range(5):
                    model.train_on_batch(x, y)
                times = []
                for _ in range(steps):
                    start = time.perf_counter()
                    model.train_on_batch(x, y)
                    times.append(time.perf_counter() - start)
                row[variant] = 1000 * float(np.median(times))
            for variant in VARIANTS[1:]:
                row[f"ratio_{variant}"] = row[variant] / row["keras"]
            timings[f"{family}/{config}"] = row
            print(keras.backend.backend(), family, config, row, file=sys.stderr)
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
                f"{backend:10s} {config:26s} keras {row['keras']:7.1f} ms  "
                f"LN in loop {row['ln_in_loop']:7.1f} ({row['ratio_ln_in_loop']:.2f}x)  "
                f"LN precomputed {row['ln_precomputed']:7.1f} "
                f"({row['ratio_ln_precomputed']:.2f}x)"
            )


if __name__ == "__main__":
    main()
