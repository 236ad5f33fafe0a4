"""Runs a SavedModel export with TensorFlow alone (started by `kzoo.serving.verify`).

This file is executed as a script in an isolated interpreter (`python -I`): it
never imports kzoo, as a TF Serving server runs no Python of ours. It prints one
JSON line (signature, graph problems) and writes every signature's outputs
(`SIGNATURE/OUTPUT`) to an .npz file.

Usage: python -I _verify_worker.py EXPORT_DIR OUTPUT_NPZ
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

FORBIDDEN_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "XlaCallModule"}


def _called_functions(node):
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        yield from (f.name for f in value.list.func)


def serving_graph(export_dir, signature="serving_default"):
    """Every node that computes the signature's outputs, through all the
    functions it calls (checkpoint save/restore functions excluded), and
    those functions."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    meta_graph = proto.meta_graphs[0]
    graph = meta_graph.graph_def
    by_name = {node.name: node for node in graph.node}
    library = {f.signature.name: f for f in graph.library.function}
    pending = [
        t.name.split(":")[0].lstrip("^")
        for t in meta_graph.signature_def[signature].outputs.values()
    ]
    seen_nodes, nodes, functions = set(), [], {}
    while pending:
        name = pending.pop()
        if name in seen_nodes or name not in by_name:
            continue
        seen_nodes.add(name)
        node = by_name[name]
        nodes.append(node)
        pending.extend(i.split(":")[0].lstrip("^") for i in node.input)
    called = [f for n in nodes for f in _called_functions(n)]
    while called:
        name = called.pop()
        if name in functions or name not in library:
            continue
        functions[name] = library[name]
        for node in library[name].node_def:
            nodes.append(node)
            called.extend(_called_functions(node))
    return nodes, list(functions.values())


def _must_compile(attr):
    return "_XlaMustCompile" in attr and attr["_XlaMustCompile"].b


def graph_problems(export_dir, signatures=("serving_default",)):
    problems = set()
    for signature in signatures:
        nodes, functions = serving_graph(export_dir, signature)
        for node in nodes:
            if node.op in FORBIDDEN_OPS:
                problems.add(f"graph contains op {node.op} (node {node.name})")
            if node.device:
                problems.add(f"node {node.name} is pinned to device {node.device!r}")
        for name in [n.name for n in nodes if _must_compile(n.attr)] + [
            f.signature.name for f in functions if _must_compile(f.attr)
        ]:
            problems.add(
                f"{name} must be compiled with XLA, which TF Serving's CPU build "
                "runs only with --xla_cpu_compilation_enabled"
            )
    return sorted(problems)


def timing(signature, feeds, batch_size, runs=30):
    """Median wall time (ms) of one `serving_default` call on `batch_size`
    rows (the reference rows repeated), after two warm-up calls."""
    batch = {
        name: tf.repeat(value, -(-batch_size // value.shape[0]), axis=0)[:batch_size]
        for name, value in feeds.items()
    }
    times = []
    for i in range(runs + 2):
        start = time.perf_counter()
        outputs = signature(**batch)
        for value in outputs.values():
            value.numpy()  # waits for the device
        if i >= 2:
            times.append(1000.0 * (time.perf_counter() - start))
    return float(np.median(times))


def main(export_dir, output_file):
    export_dir = Path(export_dir)
    loaded = tf.saved_model.load(str(export_dir))
    if "serving_default" not in loaded.signatures:
        raise SystemExit(f"{export_dir} has no serving_default signature")
    signature = loaded.signatures["serving_default"]
    input_specs = signature.structured_input_signature[1]
    output_specs = signature.structured_outputs
    with np.load(export_dir / "assets.extra" / "kzoo_reference.npz") as ref:
        feeds = {
            name: tf.constant(ref[f"input/{name}"], dtype=spec.dtype)
            for name, spec in input_specs.items()
        }
    served = {}
    for name in loaded.signatures:
        outputs = loaded.signatures[name](**feeds)
        served.update({f"{name}/{k}": v.numpy() for k, v in outputs.items()})
    np.savez(output_file, **served)
    latency_ms = {str(b): timing(signature, feeds, b) for b in (1, 64)}
    problems = graph_problems(export_dir, list(loaded.signatures))
    if "kzoo" in sys.modules:
        problems.append("kzoo was imported by the serving process")
    print(
        json.dumps(
            {
                "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in input_specs.items()},
                "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in output_specs.items()},
                "problems": problems,
                "tensorflow_version": tf.__version__,
                "device": (
                    tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
                )[0].name,
                "latency_ms": latency_ms,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
