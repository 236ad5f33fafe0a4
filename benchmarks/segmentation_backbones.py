"""Segmenters on both backbones, same data and budget: the zoo's FCN and
keras-cv's DeepLabV3+, each alone, with a random walk (RWN), with EM attention
(EMANet) and with HighwayEM (HEMNet), and each base followed by a dense CRF.

Every model is the zoo's preset, trained by `kzoo train NAME --epochs 30
--seed 0` on the TensorFlow backend (Adam 2e-3, batch 16, the keras-cv
augmentation, early stopping on the validation loss). Measured on the
texture-scenes test split (150 scenes): mean IoU, overall IoU, pixel
accuracy, and pixel accuracy in trimaps of 1, 2, 4, 8 pixels around label
boundaries (`rwn_segmentation.evaluate`); the papers' claims to check: the RWN
+2 mIoU over its base (Bertasius et al. 2016), HEMNet above EMANet and its
base (Song et al. 2020).

    python benchmarks/segmentation_backbones.py

Writes benchmarks/results/segmentation_backbones.json and .png.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from rwn_segmentation import RESULTS  # noqa: E402
from rwn_segmentation import TRIMAP_WIDTHS  # noqa: E402
from rwn_segmentation import dense_crf  # noqa: E402
from rwn_segmentation import evaluate  # noqa: E402

from kzoo import applications  # noqa: E402
from kzoo.datasets import texture_scenes  # noqa: E402
from kzoo.zoo import presets  # noqa: E402

BACKBONES = {
    "FCN": "fcn_texture_scenes",
    "DeepLabV3+": "deeplabv3plus_texture_scenes",
}
VARIANTS = {  # variant -> preset name given the base's
    "base": lambda base: base,
    "RWN": lambda base: "rwn_" + base.removeprefix("fcn_"),
    "EMANet": lambda base: "emanet_" + base.removeprefix("fcn_"),
    "HEMNet": lambda base: "hemnet_" + base.removeprefix("fcn_"),
}


def logits_of(name, images):
    model = applications.get(name, weights="pretrained")
    out = model.predict(images, batch_size=16, verbose=0)
    return out["segmentation_logits"] if isinstance(out, dict) else out, model.count_params()


def main():
    images, labels = texture_scenes.load("test")
    results = {"split": "test", "examples": int(len(images)), "backbones": {}}
    for backbone, base in BACKBONES.items():
        rows = results["backbones"][backbone] = {}
        for variant, preset_of in VARIANTS.items():
            name = preset_of(base)
            logits, params = logits_of(name, images)
            metadata = presets.read_metadata(name)[1]
            rows[variant] = {
                "preset": name,
                "parameters": params,
                "epochs_run": metadata["training"]["epochs_run"],
                **evaluate(logits, labels),
            }
            if variant == "base":
                try:
                    crf = evaluate(dense_crf(images, logits), labels)
                except ImportError:
                    crf = None
                rows["base + dense CRF (10 iterations)"] = crf and {"preset": name, **crf}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "segmentation_backbones.json").write_text(json.dumps(results, indent=1))
    for backbone, rows in results["backbones"].items():
        for variant, row in rows.items():
            if row:
                trimap = " ".join(f"{row['trimap_accuracy'][str(w)]:.3f}" for w in TRIMAP_WIDTHS)
                print(
                    f"{backbone:11s} {variant:34s} mIoU {row['mean_iou']:.4f}  "
                    f"acc {row['pixel_accuracy']:.4f}  trimap 1/2/4/8 {trimap}"
                )
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    backbones = list(results["backbones"])
    variants = list(next(iter(results["backbones"].values())))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        values = [
            (results["backbones"][b].get(variant) or {}).get("mean_iou", np.nan) for b in backbones
        ]
        left.bar(np.arange(len(backbones)) + i * width, values, width, label=variant)
    left.set_xticks(np.arange(len(backbones)) + 0.4 - width / 2, backbones)
    left.set(ylabel="test mean IoU", ylim=(0.3, 0.9), title="mean IoU per backbone")
    left.legend(fontsize=7)
    for b, style in zip(backbones, ("-", "--")):
        for variant, row in results["backbones"][b].items():
            if row:
                right.plot(
                    TRIMAP_WIDTHS,
                    [row["trimap_accuracy"][str(w)] for w in TRIMAP_WIDTHS],
                    style,
                    marker="o",
                    label=f"{b} {variant}",
                )
    right.set(
        xlabel="trimap width (pixels)",
        ylabel="pixel accuracy in trimap",
        title="boundary accuracy",
    )
    right.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(RESULTS / "segmentation_backbones.png", dpi=120)


if __name__ == "__main__":
    main()
