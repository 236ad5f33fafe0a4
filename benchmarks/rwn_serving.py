"""RWN serving latency: segmentation only vs with affinities, against its FCN.

Exports the zoo's `fcn_texture_scenes` and `rwn_texture_scenes` (and their
DeepLabV3+ twins) as TF Serving exports, loads each SavedModel with
TensorFlow alone and times, at batch 1 and 64, a call of `serving_default`
(the RWN's: segmentation only) and of the RWN's `all_outputs` (with the 81
affinities per pixel), each including the encoding of the response as TF
Serving's `PredictResponse` protobuf. It also times the RWN's two parts on
their own (pixel affinities, one random-walk step) in a `tf.function`.

    python benchmarks/rwn_serving.py

Writes benchmarks/results/rwn_serving.json.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(RESULTS.parent))
from random_walk_runtime import median_ms  # noqa: E402  (a sibling benchmark script)

PAIRS = {
    "fcn": ("fcn_texture_scenes", "rwn_texture_scenes"),
    "deeplabv3plus": ("deeplabv3plus_texture_scenes", "rwn_deeplabv3plus_texture_scenes"),
}


def _serve(signature, images):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    def call():
        response = predict_pb2.PredictResponse()
        for name, value in signature(image=images).items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return len(response.SerializeToString())

    return call


def main():
    import numpy as np
    import tensorflow as tf

    from kzoo.layers import random_walk
    from kzoo.zoo import models
    from kzoo.zoo import registry

    rng = np.random.default_rng(0)
    results = {"unit": "ms (median), bytes", "cpu_count": os.cpu_count(), "tensorflow": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, names in PAIRS.items():
            row = {}
            for name in names:
                path = models.export(registry.entry(name), tmp)
                signatures = tf.saved_model.load(str(path)).signatures
                for batch in (1, 64):
                    images = tf.constant(rng.uniform(size=(batch, 64, 64, 3)).astype("float32"))
                    for signature in sorted(signatures):
                        call = _serve(signatures[signature], images)
                        key = f"{name}/{signature}/batch{batch}"
                        row[key] = {"ms": median_ms(call, runs=40), "response_bytes": call()}
            fcn, rwn = names
            for batch in (1, 64):
                row[f"ratio_rwn_over_fcn/batch{batch}"] = (
                    row[f"{rwn}/serving_default/batch{batch}"]["ms"]
                    / row[f"{fcn}/serving_default/batch{batch}"]["ms"]
                )
            results["tensorflow"][backbone] = row
            print(backbone, json.dumps(row, indent=1), file=sys.stderr)
    features = tf.constant(rng.normal(size=(1, 64, 64, 35)).astype("float32"))
    weights = tf.constant(-np.abs(rng.normal(size=(35,))).astype("float32"))
    potentials = tf.constant(rng.normal(size=(1, 64, 64, 5)).astype("float32"))
    affinities = tf.function(lambda f: random_walk.pixel_affinities(f, weights, 5))
    transition = random_walk.transition_matrix(affinities(features))
    step = tf.function(lambda f: random_walk.random_walk_step(f, transition))
    results["tensorflow"]["parts_batch1"] = {
        "pixel_affinities_ms": median_ms(lambda: affinities(features).numpy()),
        "random_walk_step_ms": median_ms(lambda: step(potentials).numpy()),
    }
    print(results["tensorflow"]["parts_batch1"], file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rwn_serving.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
