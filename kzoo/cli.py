"""The `kzoo` command: list, train, evaluate, export and verify zoo models.

    kzoo list
    kzoo info NAME
    kzoo [--debug] [--backend B] COMMAND ...
    kzoo train NAME [--epochs N] [--seed S] [--zoo DIR] [--overwrite] [--log-dir DIR]
               [--distribute data-parallel [--virtual-cpus N]]
    kzoo evaluate NAME... | --all
    kzoo export NAME... | --all [--base-dir DIR] [--version V]
    kzoo verify PATH...
    kzoo demo [--base-dir DIR]     # evaluate, export and verify every pretrained model

`--backend` (before the command) selects the Keras backend; the default is
`$KERAS_BACKEND` or TensorFlow. The command only calls the library.
"""

import argparse
import json
import os
import re
import sys


def _table(rows, headers):
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print("\n" + line + "\n" + "  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _check_names(names, optimizers=True):
    """Raises `ValueError` naming every valid name if one of `names` is unknown."""
    from kzoo.applications import zoo
    from kzoo.optimizers import meta

    models, learned = zoo.list_models(), sorted(meta.PRESETS) if optimizers else []
    unknown = [n for n in names if n not in models and n not in learned]
    if unknown:
        raise ValueError(
            f"unknown name {', '.join(map(repr, unknown))}; models: {', '.join(models)}"
            + (f"; learned optimizers: {', '.join(learned)}" if learned else "")
            + "."
        )
    return names


def _names(args, zoo, presets):
    if getattr(args, "all", False):
        return [n for n in zoo.list_models() if n in presets.available_presets()]
    if not args.names:
        raise SystemExit("give model names or --all")
    return _check_names(args.names, optimizers=args.command == "evaluate")


def _where(presets, name):
    """Where the preset `name` is loaded from, and what it shadows."""
    found = presets.locations(name)
    if not found:
        return "-"
    (path, kind), shadowed = found[0], [k for _, k in found[1:]]
    text = f"{kind}: {path}"
    if "shipped" in shadowed:
        text += " (SHADOWS the shipped preset)"
    return text


def _recorded(presets, name):
    """`(headline test metric, parameter count)` of a preset's metadata, or blanks."""
    found = presets.locations(name)
    if not found:
        return "-", "-"
    try:
        metadata = json.loads((found[0][0] / presets.METADATA_FILE).read_text())
        test = metadata["metrics"]["test"]
    except (OSError, ValueError, KeyError):
        return "?", "?"
    if "task" in metadata:
        from kzoo import training

        metric = training.TASKS[metadata["task"]].headline_metric(test)
    else:  # a learned optimizer
        metric = "final_loss"
    value = f"{metric} {_fmt(test[metric])}" if metric in test else "-"
    return value, f"{metadata['parameter_count']:,}" if "parameter_count" in metadata else "-"


def cmd_list(args):
    from kzoo.applications import presets
    from kzoo.applications import zoo

    rows = []
    for name in zoo.list_models():
        item = zoo.entry(name)
        rows.append(
            [
                name,
                item.builder.__name__,
                item.task,
                *_recorded(presets, name),
                _where(presets, name),
                item.description,
            ]
        )
    from kzoo.optimizers import meta

    for name, item in sorted(meta.PRESETS.items()):
        rows.append(
            [
                name,
                "LSTMOptimizer",
                f"meta: {item.family}",
                *_recorded(presets, name),
                _where(presets, name),
                item.description,
            ]
        )
    _table(
        rows,
        [
            "name",
            "builder",
            "task",
            "test metric",
            "parameters",
            "pretrained (loaded from)",
            "description",
        ],
    )
    print(f"\nUser zoo (kzoo train writes here, searched first): {presets.user_zoo()}")


def cmd_info(args):
    from kzoo.applications import presets

    path = presets.resolve(args.name)
    metadata = json.loads((path / presets.METADATA_FILE).read_text())
    kind = metadata.get("kind", "model")
    from kzoo.optimizers import learned

    weights = learned.PHI_FILE if kind == "optimizer" else presets.WEIGHTS_FILE
    presets.read_metadata(args.name, weights_file=weights, kind=kind)  # verifies every file
    print(f"{args.name}  ({kind}, {path})")
    print(f"  {metadata.get('description', '')}")
    for key in ("builder", "task", "family", "dataset", "training_command", "initialized_from"):
        if metadata.get(key):
            print(f"  {key}: {metadata[key]}")
    if metadata.get("builder_args"):
        print(f"  builder_args: {json.dumps(metadata['builder_args'])}")
    if "parameter_count" in metadata:
        print(f"  parameters: {metadata['parameter_count']:,}")
    if kind == "model":
        config = json.loads((path / presets.CONFIG_FILE).read_text())["config"]
        for layer in config.get("layers", []):
            if layer["class_name"] == "InputLayer":
                spec = layer["config"]
                print(f"  input {spec['name']}: {spec['dtype']} {spec['batch_shape']}")
        print(f"  outputs: {', '.join(o[0] for o in _output_names(config))}")
    for split, values in metadata.get("metrics", {}).items():
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
        print(f"  {split}: {shown}")
    for file, digest in sorted(metadata["sha256"].items()):
        print(f"  sha256 {file}: {digest}")
    print(
        f"  saved with keras {metadata.get('keras_version')} on "
        f"{metadata.get('backend')}, {metadata.get('date_saved')}"
    )


def _output_names(config):
    outputs = config.get("output_layers", [])
    if isinstance(outputs, dict):
        return list(outputs.values())
    return outputs if outputs and isinstance(outputs[0], list) else [outputs]


def cmd_train(args):
    from kzoo import training
    from kzoo.optimizers import meta

    _check_names([args.name])
    if args.name in meta.PRESETS:  # a learned optimizer: meta-train it
        if args.distribute:
            raise SystemExit(
                "kzoo train: error: --distribute applies to zoo models; "
                "meta-training runs on one device."
            )
        _, metadata = meta.train_preset(
            args.name,
            zoo_dir=args.zoo,
            epochs=args.epochs,
            overwrite=args.overwrite,
            seed=args.seed,
            log_dir=args.log_dir,
        )
    else:
        if args.virtual_cpus:
            from kzoo import backend

            backend.use_virtual_cpu_devices(args.virtual_cpus)
        _, metadata = training.train(
            args.name,
            zoo_dir=args.zoo,
            epochs=args.epochs,
            overwrite=args.overwrite,
            seed=args.seed,
            distribute=args.distribute == "data-parallel",
        )
    test = metadata["metrics"]["test"]
    from kzoo.applications import presets

    _table([[args.name, *(_fmt(v) for v in test.values())]], ["name", *(f"test {k}" for k in test)])
    target = presets.training_target(args.name, args.zoo, overwrite=True)
    print(
        f"\nWrote {target}; `kzoo evaluate {args.name}` now loads it"
        + (
            " (it shadows the shipped preset)"
            if len(presets.locations(args.name)) > 1
            and presets.locations(args.name)[0][0] == target
            else ""
        )
        + "."
    )


def _evaluate(names):
    from kzoo import training
    from kzoo.applications import presets
    from kzoo.applications import zoo

    rows, ok = [], True
    for name in names:
        print(f"evaluating {name} on its test split", file=sys.stderr)
        model = zoo.get(name, weights="pretrained")
        _, metadata = presets.read_metadata(name)
        results = training.evaluate(model, zoo.entry(name).task)
        recorded = metadata["metrics"]["test"]
        match = abs(results["loss"] - recorded["loss"]) <= 1e-3 * max(1.0, recorded["loss"])
        ok &= match
        metric = training.TASKS[zoo.entry(name).task].headline_metric(results)
        rows.append(
            [
                name,
                metric,
                _fmt(results[metric]),
                _fmt(results["loss"]),
                _fmt(recorded["loss"]),
                "yes" if match else "NO",
            ]
        )
    _table(rows, ["name", "metric", "test value", "test loss", "recorded loss", "matches"])
    return ok


def _evaluate_optimizers(names):
    from kzoo.applications import presets
    from kzoo.optimizers import learned
    from kzoo.optimizers import meta

    rows, ok = [], True
    for name in names:
        _, metadata = presets.read_metadata(name, weights_file=learned.PHI_FILE, kind="optimizer")
        recorded = metadata["metrics"]["test"]["final_loss"]
        print(
            f"evaluating {name} on {metadata['metrics']['test']['problems']} held-out problems",
            file=sys.stderr,
        )
        results = meta.evaluate_preset(name)
        match = abs(results["final_loss"] - recorded) <= 1e-3 * max(1.0, recorded)
        ok &= match
        rows.append(
            [
                name,
                meta.PRESETS[name].family,
                results["problems"],
                _fmt(results["final_loss"]),
                _fmt(recorded),
                "yes" if match else "NO",
            ]
        )
    _table(
        rows,
        ["learned optimizer", "problems", "test problems", "final loss", "recorded", "matches"],
    )
    return ok


def cmd_evaluate(args):
    from kzoo.applications import presets
    from kzoo.applications import zoo
    from kzoo.optimizers import meta

    names = _names(args, zoo, presets)
    learned = [n for n in names if n in meta.PRESETS]
    if args.all:
        learned = [n for n in sorted(meta.PRESETS) if n in presets.available_presets()]
    models = [n for n in names if n not in meta.PRESETS]
    ok = _evaluate(models) if models else True
    ok &= _evaluate_optimizers(learned) if learned else True
    if not ok:
        raise SystemExit("evaluation differs from the metrics recorded in the zoo")


def _export(names, base_dir, version=None):
    from kzoo import serving
    from kzoo import training
    from kzoo.applications import zoo

    paths = []
    for name in names:
        model = zoo.get(name, weights="pretrained")
        inputs = {model.inputs[0].name: training.sample_inputs(name)}
        paths.append(serving.export(model, base_dir, version=version, sample_inputs=inputs))
        print(f"exported {name} -> {paths[-1]}", file=sys.stderr)
    return paths


def cmd_export(args):
    from kzoo.applications import presets
    from kzoo.applications import zoo

    paths = _export(_names(args, zoo, presets), args.base_dir, args.version)
    _table([[str(p)] for p in paths], ["export"])


def _verify(paths, debug=False):
    from kzoo import serving

    rows, ok = [], True
    for path in paths:
        print(f"verifying {path}", file=sys.stderr)
        try:
            report = serving.verify(path)
            diff = max(report.max_abs_diff.values(), default=0.0)
            rows.append(
                [
                    str(path),
                    ", ".join(report.inputs),
                    ", ".join(report.outputs),
                    f"{diff:.2e}",
                    report.device,
                    f"{report.latency_ms['1']:.2f}",
                    f"{report.latency_ms['64']:.2f}",
                    "ok",
                ]
            )
        except serving.VerificationError as e:
            ok = False
            rows.append([str(path), "", "", "", "", "", "", "FAILED"])
            print(e.detail if debug else e, file=sys.stderr)
    _table(
        rows,
        [
            "export",
            "inputs",
            "outputs",
            "max |diff|",
            "device",
            "ms/batch 1",
            "ms/batch 64",
            "status",
        ],
    )
    return ok


def cmd_verify(args):
    if not _verify(args.paths, args.debug):
        raise SystemExit("verification failed")


def cmd_demo(args):
    from kzoo.applications import presets
    from kzoo.applications import zoo

    names = [n for n in zoo.list_models() if n in presets.available_presets()]
    if not names:
        raise SystemExit("the zoo holds no pretrained model")
    print(f"Evaluating {len(names)} pretrained zoo models on held-out data", file=sys.stderr)
    evaluated = _evaluate(names)
    from kzoo.optimizers import meta

    learned = [n for n in sorted(meta.PRESETS) if n in presets.available_presets()]
    print(f"\nEvaluating {len(learned)} learned optimizers on held-out problems", file=sys.stderr)
    evaluated &= _evaluate_optimizers(learned)
    paths = _export(names, args.base_dir)
    verified = _verify(paths, args.debug)
    print(f"\nTF Serving config: {os.path.join(args.base_dir, 'models.config')}")
    if not (evaluated and verified):
        raise SystemExit("demo failed")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="kzoo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        help="Keras backend (default: $KERAS_BACKEND or tensorflow)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks and subprocess output on errors"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "list",
        help="list the registered models and learned optimizers, with "
        "their recorded test metric, size and where their preset is loaded "
        "from",
    ).set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="print a preset's model card (verifies its files)")
    p.add_argument("name", help="a zoo name (kzoo list) or a preset directory path")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model and store it in the zoo")
    p.add_argument("name", help="a registered model or learned optimizer (kzoo list)")
    p.add_argument(
        "--epochs", type=_positive_int, help="number of epochs, >= 1 (default: the task's)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--zoo",
        help="zoo directory to write to (default: the user zoo, "
        "$KZOO_ZOO or ~/.kzoo/zoo, which name lookups search first)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing preset")
    p.add_argument("--log-dir", help="TensorBoard directory (learned optimizers)")
    p.add_argument(
        "--distribute",
        choices=["data-parallel"],
        help="train on all devices with the backend's engine (JAX: "
        "keras.distribution; TensorFlow: tf.distribute)",
    )
    p.add_argument(
        "--virtual-cpus",
        type=_positive_int,
        help="split the CPU into N devices (to try --distribute without GPUs)",
    )
    p.set_defaults(func=cmd_train)

    for command, func, help_text in (
        ("evaluate", cmd_evaluate, "evaluate pretrained models on their test split"),
        ("export", cmd_export, "export pretrained models for TF Serving"),
    ):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("names", nargs="*", help="zoo names (kzoo list)")
        p.add_argument("--all", action="store_true", help="every pretrained model")
        if command == "export":
            p.add_argument(
                "--base-dir",
                default="saved_models",
                help="serving base directory, what TF Serving mounts (default: saved_models)",
            )
            p.add_argument(
                "--version",
                type=_positive_int,
                help="version number, >= 1 (default: the next free one)",
            )
        p.set_defaults(func=func)

    p = sub.add_parser("verify", help="verify SavedModel exports in a TF-only process")
    p.add_argument("paths", nargs="+", help="export version directories")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="evaluate, export and verify every pretrained model")
    p.add_argument(
        "--base-dir", default="saved_models", help="serving base directory (default: saved_models)"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def _expected_errors():
    """The exception types reported as one line: bad input, files, data."""
    errors = [OSError, ValueError, LookupError, RuntimeError, AssertionError]
    if "tensorflow" in sys.modules:  # a corrupt TFDS cache or checkpoint
        errors.append(sys.modules["tensorflow"].errors.OpError)
    if "google.protobuf.message" in sys.modules:
        errors.append(sys.modules["google.protobuf.message"].DecodeError)
    return tuple(errors)


def _one_line(error):
    """The error's message on one line (Keras wraps a layer's message in a
    banner; the message itself is the bold part)."""
    text = str(error)
    bold = re.search(r"\x1b\[1m(.*?)\x1b\[0m", text, re.S)
    text = bold.group(1) if bold else text
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    text = text or type(error).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.backend and os.environ.get("KERAS_BACKEND") != args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
        if "keras" in sys.modules:  # imported with another backend: start again
            os.execv(sys.executable, [sys.executable, "-m", "kzoo.cli", *argv])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        args.func(args)
    except Exception as e:
        if args.debug and getattr(e, "detail", None):
            print(e.detail, file=sys.stderr)  # e.g. a subprocess' whole stderr
        if args.debug or not isinstance(e, _expected_errors()):
            raise
        print(f"kzoo {args.command}: error: {_one_line(e)} (--debug for details)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
