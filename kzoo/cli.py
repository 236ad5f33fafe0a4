"""The `kzoo` command: list, train, evaluate, export and verify the zoo.

    kzoo list
    kzoo info NAME
    kzoo [--debug] [--backend B] COMMAND ...
    kzoo train NAME [--epochs N] [--seed S] [--zoo DIR] [--overwrite] [--log-dir DIR]
               [--distribute data-parallel [--virtual-cpus N]]
    kzoo evaluate NAME... | --all
    kzoo export NAME... | --all [--base-dir DIR] [--version V]
    kzoo verify PATH...
    kzoo demo [--base-dir DIR]     # evaluate every preset, export and verify the models

NAME is any zoo entry, a model or a learned optimizer (`kzoo.zoo.registry`):
the commands call the entry's kind hooks and never branch on the kind.
`--backend` (before the command) selects the Keras backend; the default is
`$KERAS_BACKEND` or TensorFlow. Nothing imports a deep-learning framework
until a command needs one, so `--help`, `list` and `info` answer at once.
"""

import argparse
import json
import os
import re
import sys

from kzoo import runtime


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


def _entries(args, exportable=False):
    """The entries named on the command line (every valid name is listed if
    one is unknown), or with `--all` every pretrained one (only the exportable
    kinds if `exportable`)."""
    from kzoo.zoo import registry

    if getattr(args, "all", False):
        entries = [registry.entry(n) for n in registry.list_entries(pretrained=True)]
        return [e for e in entries if not exportable or registry.KINDS[e.kind].exportable]
    if not args.names:
        raise SystemExit(f"kzoo {args.command}: error: give zoo names (kzoo list) or --all")
    return [registry.entry(n) for n in args.names]


def _where(name):
    """Where the preset `name` is loaded from, and what it shadows."""
    from kzoo.zoo import presets

    found = presets.locations(name)
    if not found:
        return "-"
    (path, kind), shadowed = found[0], [k for _, k in found[1:]]
    text = f"{kind}: {path}"
    if "shipped" in shadowed:
        text += " (SHADOWS the shipped preset)"
    return text


def _recorded(item):
    """`(headline test metric, parameter count)` of an entry's preset, or blanks."""
    from kzoo.zoo import presets
    from kzoo.zoo.tasks import TASKS

    found = presets.locations(item.name)
    if not found:
        return "-", "-"
    try:
        metadata = json.loads((found[0][0] / presets.METADATA_FILE).read_text())
        test = metadata["metrics"]["test"]
        metric = TASKS[item.task].headline_metric(test)
    except (OSError, ValueError, KeyError, StopIteration):
        return "?", "?"
    count = metadata.get("parameter_count")
    return f"{metric} {_fmt(test[metric])}", f"{count:,}" if count else "-"


def cmd_list(args):
    from kzoo.zoo import presets
    from kzoo.zoo import registry

    rows = []
    for name in registry.list_entries():
        item = registry.entry(name)
        rows.append(
            [
                name,
                item.kind,
                item.builder_name,
                item.task,
                *_recorded(item),
                _where(name),
                item.description,
            ]
        )
    _table(
        rows,
        [
            "name",
            "kind",
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
    from kzoo.zoo import presets

    path, metadata = presets.read_metadata(args.name, kind=None)  # verifies every file
    print(f"{args.name}  ({metadata.get('kind', 'model')}, {path})")
    print(f"  {metadata.get('description', '')}")
    for key in ("builder", "task", "dataset", "training_command", "initialized_from"):
        if metadata.get(key):
            print(f"  {key}: {metadata[key]}")
    if metadata.get("builder_args"):
        print(f"  builder_args: {json.dumps(metadata['builder_args'])}")
    if "parameter_count" in metadata:
        print(f"  parameters: {metadata['parameter_count']:,}")
    config = json.loads((path / presets.CONFIG_FILE).read_text())
    if "layers" in config.get("config", {}):  # a functional Keras model
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "InputLayer":
                spec = layer["config"]
                print(f"  input {spec['name']}: {spec['dtype']} {spec['batch_shape']}")
        print(f"  outputs: {', '.join(o[0] for o in _output_names(config['config']))}")
    else:
        print(f"  architecture: {json.dumps(config)}")
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
    from kzoo.zoo import presets
    from kzoo.zoo import registry

    item = registry.entry(args.name)  # an unknown name fails before anything is imported
    options = {}
    if args.resume:
        if item.kind != "optimizer":
            raise ValueError(
                f"--resume continues a learned optimizer's meta-training; {args.name} is a model."
            )
        options["resume"] = True
    if args.virtual_cpus:
        from kzoo import backend

        backend.use_virtual_cpu_devices(args.virtual_cpus)
    _, metadata = registry.train(
        args.name,
        zoo_dir=args.zoo,
        epochs=args.epochs,
        overwrite=args.overwrite,
        seed=args.seed,
        log_dir=args.log_dir,
        distribute=args.distribute == "data-parallel",
        **options,
    )
    test = {k: v for k, v in metadata["metrics"]["test"].items() if not isinstance(v, dict)}
    _table([[args.name, *(_fmt(v) for v in test.values())]], ["name", *(f"test {k}" for k in test)])
    target = presets.training_target(args.name, args.zoo, overwrite=True)
    found = presets.locations(args.name)
    shadows = len(found) > 1 and found[0][0] == target
    print(
        f"\nWrote {target}; `kzoo evaluate {args.name}` now loads it"
        + (" (it shadows the shipped preset)" if shadows else "")
        + "."
    )


def _evaluate(entries):
    """Re-scores each entry's preset and compares with its recorded test score."""
    from kzoo.zoo import presets
    from kzoo.zoo import registry
    from kzoo.zoo.tasks import TASKS

    rows, ok = [], True
    for number, item in enumerate(entries, 1):
        print(
            f"[{number}/{len(entries)}] evaluating {item.name} on its test split", file=sys.stderr
        )
        _, metadata = presets.read_metadata(item.name, kind=item.kind)
        results = registry.evaluate(item.name)
        kind = registry.KINDS[item.kind]
        key = kind.score
        recorded = metadata["metrics"]["test"][key]
        match = abs(results[key] - recorded) <= kind.tolerance * max(1.0, abs(recorded))
        ok &= match
        metric = TASKS[item.task].headline_metric(results)
        rows.append(
            [
                item.name,
                item.kind,
                metric,
                _fmt(results[metric]),
                f"{key} {_fmt(results[key])}",
                _fmt(recorded),
                "yes" if match else "NO",
            ]
        )
    _table(rows, ["name", "kind", "metric", "test value", "checked", "recorded", "matches"])
    return ok


def cmd_evaluate(args):
    if not _evaluate(_entries(args)):
        raise SystemExit("evaluation differs from the metrics recorded in the zoo")


def _export(entries, base_dir, version=None):
    paths = []
    for number, item in enumerate(entries, 1):
        print(f"[{number}/{len(entries)}] exporting {item.name}", file=sys.stderr)
        paths.append(item.hooks().export(item, base_dir, version=version))
        print(f"  -> {paths[-1]}", file=sys.stderr)
    return paths


def cmd_export(args):
    paths = _export(_entries(args, exportable=True), args.base_dir, args.version)
    _table([[str(p)] for p in paths], ["export"])


def _verify(paths, debug=False):
    from kzoo import serving

    rows, ok = [], True
    for number, path in enumerate(paths, 1):
        print(f"[{number}/{len(paths)}] verifying {path}", file=sys.stderr)
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
    from kzoo.zoo import registry

    entries = [registry.entry(n) for n in registry.list_entries(pretrained=True)]
    if not entries:
        raise SystemExit("the zoo holds no preset")
    print(f"Evaluating {len(entries)} zoo presets on held-out data", file=sys.stderr)
    evaluated = _evaluate(entries)
    exportable = [e for e in entries if registry.KINDS[e.kind].exportable]
    paths = _export(exportable, args.base_dir)
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

    p = sub.add_parser(
        "train", help="train a model (or meta-train a learned optimizer) into the user zoo"
    )
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
    p.add_argument("--log-dir", help="TensorBoard log directory")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a learned optimizer's meta-training from its checkpoint "
        "(<zoo>/.checkpoints/<name>, written after every epoch) up to --epochs in all",
    )
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
        (
            "evaluate",
            cmd_evaluate,
            "re-score zoo presets on their test split and compare with the recorded metrics",
        ),
        ("export", cmd_export, "export pretrained models for TF Serving"),
    ):
        p = sub.add_parser(command, help=help_text)
        p.add_argument("names", nargs="*", help="zoo names (kzoo list)")
        p.add_argument(
            "--all",
            action="store_true",
            help="every preset in the zoo"
            + (" that exports (models)" if command == "export" else ""),
        )
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

    p = sub.add_parser("demo", help="evaluate every zoo preset, export and verify every model")
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
    runtime.tune_cpu_allocator()  # before any framework starts its threads
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
