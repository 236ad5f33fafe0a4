"""Segmentation quality of the zoo's FCN and RWN on the texture-scenes test split.

Measured (paper, Bertasius et al. 2016: Table 1, Fig. 5, Fig. 7):

- mean IoU and overall IoU (pooled intersections / pooled unions) of the FCN,
  the RWN in the zoo's setting (its training setting: one step, R = 5), in
  the paper's test setting scaled to 64 pixels (converged walk, R = 1) and
  other radii, the RWN's backbone without the walk, and the FCN followed by
  dense-CRF post-processing (`pydensecrf2`, 10 mean-field iterations);
- pixel accuracy in trimaps: bands of 1, 2, 4, 8 pixels around label
  boundaries;
- pixel accuracy and mean IoU vs the number of random-walk steps (`A^t f`).

    python benchmarks/rwn_segmentation.py

Writes benchmarks/results/rwn_segmentation.json and rwn_segmentation.png.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from kzoo import applications  # noqa: E402
from kzoo.datasets import texture_scenes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES = texture_scenes.NUM_CLASSES
TRIMAP_WIDTHS = (1, 2, 4, 8)


def iou_scores(predicted, labels):
    intersections = np.array([np.sum((predicted == c) & (labels == c)) for c in range(NUM_CLASSES)])
    unions = np.array([np.sum((predicted == c) | (labels == c)) for c in range(NUM_CLASSES)])
    return {
        "mean_iou": float(np.mean(intersections / np.maximum(unions, 1))),
        "overall_iou": float(intersections.sum() / unions.sum()),
        "pixel_accuracy": float(np.mean(predicted == labels)),
    }


def trimap_accuracy(predicted, labels):
    result = {}
    for width in TRIMAP_WIDTHS:
        correct = total = 0
        for p, y in zip(predicted, labels):
            boundary = np.zeros_like(y, bool)
            boundary[:-1] |= y[:-1] != y[1:]
            boundary[:, :-1] |= y[:, :-1] != y[:, 1:]
            band = ndimage.distance_transform_edt(~boundary) <= width
            correct += np.sum((p == y) & band)
            total += np.sum(band)
        result[str(width)] = float(correct / total)
    return result


def evaluate(logits, labels):
    predicted = np.argmax(logits, -1)
    return {**iou_scores(predicted, labels), "trimap_accuracy": trimap_accuracy(predicted, labels)}


def rwn_logits(images, **walk):
    model = applications.RWN(weights="rwn_texture_scenes", **walk)
    return model.predict(images, batch_size=16, verbose=0)["segmentation_logits"]


def dense_crf(images, logits, iterations=10):
    import pydensecrf.densecrf as dcrf

    size = images.shape[1]
    out = []
    for image, score in zip(images, logits):
        probabilities = np.exp(score - score.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        model = dcrf.DenseCRF2D(size, size, NUM_CLASSES)
        unary = -np.log(np.maximum(probabilities, 1e-8)).transpose(2, 0, 1)
        model.setUnaryEnergy(np.ascontiguousarray(unary.reshape(NUM_CLASSES, -1), "float32"))
        model.addPairwiseGaussian(sxy=3, compat=3)
        # DeepLab's bilateral kernel (sxy 121 at ~500 pixels) scaled to 64 pixels.
        rgb = np.ascontiguousarray((image * 255).round().astype("uint8"))
        model.addPairwiseBilateral(sxy=16, srgb=5, rgbim=rgb, compat=4)
        q = np.array(model.inference(iterations)).reshape(NUM_CLASSES, size, size)
        out.append(np.log(np.maximum(q, 1e-8)).transpose(1, 2, 0))
    return np.stack(out)


def main():
    images, labels = texture_scenes.load("test")
    fcn = applications.get("fcn_texture_scenes", weights="pretrained")
    fcn_logits = fcn.predict(images, batch_size=16, verbose=0)
    results = {"split": "test", "examples": int(len(images)), "models": {}}
    rows = results["models"]
    rows["FCN"] = evaluate(fcn_logits, labels)
    rows["RWN one step R=5 (zoo and training setting)"] = evaluate(rwn_logits(images), labels)
    for radius in (1, 3, 5):
        rows[f"RWN converged R={radius}, alpha=0.5"] = evaluate(
            rwn_logits(images, walk_mode="converged", walk_radius=radius), labels
        )
    rows["RWN backbone without walk"] = evaluate(
        rwn_logits(images, walk_mode="converged", alpha=0.0), labels
    )
    try:
        rows["FCN + dense CRF (10 iterations)"] = evaluate(dense_crf(images, fcn_logits), labels)
    except ImportError:
        rows["FCN + dense CRF (10 iterations)"] = None
    steps = {}
    for radius in (1, 5):
        steps[str(radius)] = {}
        for t in (1, 2, 4, 8, 16):
            scores = evaluate(
                rwn_logits(images, walk_mode="step", walk_radius=radius, walk_steps=t), labels
            )
            steps[str(radius)][str(t)] = {k: scores[k] for k in ("pixel_accuracy", "mean_iou")}
    results["accuracy_vs_steps"] = steps
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rwn_segmentation.json").write_text(json.dumps(results, indent=1))
    for name, row in rows.items():
        if row:
            print(
                f"{name:45s} mIoU {row['mean_iou']:.4f}  oIoU {row['overall_iou']:.4f}  "
                f"acc {row['pixel_accuracy']:.4f}  trimap {row['trimap_accuracy']}"
            )
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, row in results["models"].items():
        if row and ("FCN" in name or "zoo" in name or "R=1," in name):
            left.plot(
                TRIMAP_WIDTHS,
                [row["trimap_accuracy"][str(w)] for w in TRIMAP_WIDTHS],
                marker="o",
                label=name,
            )
    left.set(
        xlabel="trimap width (pixels)",
        ylabel="pixel accuracy in trimap",
        title="boundary accuracy (paper Fig. 5)",
    )
    left.legend(fontsize=7)
    for radius, curve in results["accuracy_vs_steps"].items():
        ts = sorted(curve, key=int)
        right.plot(
            [int(t) for t in ts],
            [curve[t]["mean_iou"] for t in ts],
            marker="o",
            label=f"A^t f, R={radius}",
        )
    right.axhline(results["models"]["FCN"]["mean_iou"], color="gray", ls=":", label="FCN")
    right.set(
        xscale="log",
        xlabel="random-walk steps t",
        ylabel="mean IoU",
        title="accuracy vs steps (paper Fig. 7)",
    )
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "rwn_segmentation.png", dpi=120)


if __name__ == "__main__":
    main()
