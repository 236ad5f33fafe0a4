"""Cost of the segmentation input pipeline: tf.data + keras-cv vs the numpy one.

The texture-scenes models train on augmented batches (random horizontal flip
and a shift of up to 8 pixels, the same for image and mask). Two pipelines:

- `keras_cv`: today's, `kzoo.datasets.texture_scenes.augmented_batches`
  (`tf.data`, keras-cv `RandomFlip` + `RandomTranslation`);
- `numpy`: the one it replaced, a `keras.utils.PyDataset` flipping and
  shifting with numpy per example (kept here, verbatim in effect, as the
  baseline).

Per backend (a fresh process each), on 320 of the training scenes, batch 16:

- `iterate_s`: one epoch of batches, no model (the pipeline alone);
- `fit_s`: one epoch of `fit` of the zoo's FCN (its task's loss and Adam),
  after a warm-up epoch, so compilation is not counted.

    python benchmarks/segmentation_input_pipeline.py

Writes benchmarks/results/segmentation_input_pipeline.json and .png.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("tensorflow", "jax", "torch")
SCENES = 320  # of the 1000 training scenes: 20 batches of 16


def _numpy_batches(x, y, batch_size, seed):
    import keras
    import numpy as np

    def shift(array, dy, dx):
        out = np.zeros_like(array)
        h, w = array.shape[:2]
        out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = array[
            max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        return out

    class Augmented(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, index):
            idx = self.order[index * batch_size : (index + 1) * batch_size]
            images, labels = x[idx].copy(), y[idx].copy()
            for i in range(len(images)):
                if self.rng.uniform() < 0.5:
                    images[i], labels[i] = images[i, :, ::-1], labels[i, :, ::-1]
                dy, dx = self.rng.integers(-8, 9, size=2)
                images[i], labels[i] = shift(images[i], dy, dx), shift(labels[i], dy, dx)
            return images, labels

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(x))

    return Augmented()


def measure(scenes=SCENES, batch_size=16):
    """One backend's numbers (run in a fresh process per backend)."""
    import keras

    from kzoo.datasets import texture_scenes
    from kzoo.zoo import models
    from kzoo.zoo.tasks import TASKS

    x, y = texture_scenes.load("train")
    x, y = x[:scenes], y[:scenes]
    task = TASKS["texture_scenes"]
    pipelines = {
        "keras_cv": lambda: texture_scenes.augmented_batches(x, y, batch_size, seed=0),
        "numpy": lambda: _numpy_batches(x, y, batch_size, seed=0),
    }
    results = {}
    for name, make in pipelines.items():
        data = make()
        start = time.perf_counter()
        if name == "numpy":
            count = sum(1 for index in range(len(data)) if data[index] is not None)
        else:
            count = sum(1 for _ in data)
        iterate = time.perf_counter() - start
        keras.utils.set_random_seed(0)
        model = models.get("fcn_texture_scenes")
        task.compile(model, task.optimizer())
        model.fit(make(), epochs=1, verbose=0)  # warm-up: compilation
        start = time.perf_counter()
        model.fit(data, epochs=1, verbose=0)
        results[name] = {
            "batches": count,
            "iterate_s": round(iterate, 3),
            "fit_s": round(time.perf_counter() - start, 2),
        }
    return results


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in zip(
        axes, ("iterate_s", "fit_s"), ("pipeline alone, 1 epoch", "FCN fit, 1 epoch")
    ):
        for k, pipeline in enumerate(("numpy", "keras_cv")):
            values = [results[b][pipeline][key] for b in BACKENDS]
            ax.bar([i + 0.4 * k for i in range(len(BACKENDS))], values, 0.4, label=pipeline)
        ax.set_xticks([i + 0.2 for i in range(len(BACKENDS))], BACKENDS)
        ax.set_ylabel("seconds")
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure()))
        return
    results = {}
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run(
            [sys.executable, __file__, "--one", backend],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results[backend] = json.loads(out.strip().splitlines()[-1])
        print(backend, results[backend], file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    record = {
        "command": "python benchmarks/segmentation_input_pipeline.py",
        "machine": "2 CPU cores, no GPU",
        "scenes": SCENES,
        "batch_size": 16,
        "results": results,
    }
    (RESULTS / "segmentation_input_pipeline.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(results, RESULTS / "segmentation_input_pipeline.png")


if __name__ == "__main__":
    main()
