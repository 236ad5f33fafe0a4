"""TensorFlow SavedModel export in TF Serving's layout, and its verification.

`export` writes `base_dir/<name>/serving/<version>/`, a SavedModel with a
`serving_default` signature whose inputs and outputs carry the model's input
and output layer names. The graph is always a plain TensorFlow graph made in a
TensorFlow-backend process: a model living in a JAX or PyTorch process is
saved to a `.keras` file and exported by a TensorFlow subprocess (weights are
backend-independent), because torch.export and jax2tf produce artifacts that
fail or stay pinned to the exporting platform. No device is hard-coded, so
TF Serving's GPU build places the ops on the GPU.

`verify` loads an export in a separate process that never imports kzoo, runs
the reference inputs recorded at export time through `serving_default`, and
compares with the outputs the Keras model gave for them.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

SIGNATURE = "serving_default"
ALL_OUTPUTS_SIGNATURE = "all_outputs"
EXTRA_DIR = "assets.extra"
REFERENCE_FILE = "kzoo_reference.npz"
EXPORT_INFO_FILE = "kzoo_export.json"
MODELS_CONFIG = "models.config"
_WORKER = Path(__file__).with_name("_verify_worker.py")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_GENERIC_NAME = re.compile(r"^(keras_tensor|input|inputs|args|output)(_\d+)?$")


class VerificationError(AssertionError):
    """A SavedModel export does not behave like the Keras model it came from.

    `str(error)` is one line (the last error); `error.detail` has all of it
    (every problem, or the TensorFlow process' stderr).
    """

    def __init__(self, message, detail=None):
        super().__init__(message)
        self.detail = detail or message


def _last_line(text):
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _signature_specs(model):
    specs = []
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        specs.append((name, tuple(tensor.shape), keras.backend.standardize_dtype(tensor.dtype)))
    return specs


def _sample_inputs(specs, batch_size=4, seed=0):
    rng = np.random.default_rng(seed)
    samples = {}
    for name, shape, dtype in specs:
        concrete = [batch_size] + [16 if d is None else d for d in shape[1:]]
        if "int" in dtype:
            # 0 and 1 are valid ids for any embedding or class input.
            samples[name] = rng.integers(0, 2, size=concrete).astype(dtype)
        else:
            samples[name] = rng.uniform(size=concrete).astype(dtype)
    return samples


def _to_numpy(value):
    array = np.asarray(keras.ops.convert_to_numpy(value))
    return array.astype("float32") if "float" in str(array.dtype) else array


def _named_outputs(model, outputs):
    """The model's outputs by name, whether it returns a dict, a list or one tensor."""
    if isinstance(outputs, dict):
        return dict(outputs)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return dict(zip(model.output_names, outputs))


def _run_model(model, inputs):
    names = [t.name.split(":")[0] for t in model.inputs]
    args = [inputs[n] for n in names]
    outputs = model(args[0] if len(args) == 1 else args, training=False)
    return {n: _to_numpy(o) for n, o in _named_outputs(model, outputs).items()}


def _write_saved_model(model, path, outputs=None):
    """Writes `model` as a SavedModel (TensorFlow backend only).

    `serving_default` returns `outputs` (default: all of them); when that
    leaves some out, the `all_outputs` signature returns every output.
    """
    import tensorflow as tf

    specs = [
        tf.TensorSpec((None,) + shape[1:], dtype, name=name)
        for name, shape, dtype in _signature_specs(model)
    ]

    def endpoint(names):
        def serve(*args):
            outputs = model(args[0] if len(args) == 1 else list(args), training=False)
            return {
                name: tf.cast(out, tf.float32) if out.dtype in (tf.float16, tf.bfloat16) else out
                for name, out in _named_outputs(model, outputs).items()
                if names is None or name in names
            }

        return serve

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, endpoint(outputs), input_signature=specs)
    if outputs is not None:
        archive.add_endpoint(ALL_OUTPUTS_SIGNATURE, endpoint(None), input_signature=specs)
    archive.write_out(str(path), verbose=False)


def _export_in_tensorflow_process(model, path, outputs=None):
    with tempfile.TemporaryDirectory() as tmp:
        keras_file = Path(tmp) / "model.keras"
        model.save(keras_file)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        selected = [] if outputs is None else [",".join(outputs)]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "kzoo.serving._export_worker",
                str(keras_file),
                str(path),
                *selected,
            ],
            env=env,
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        raise ExportError(
            f"the TensorFlow export process failed (exit {result.returncode}): "
            f"{_last_line(result.stderr)}",
            detail=result.stderr,
        )


class ExportError(RuntimeError):
    """The TensorFlow process that writes a SavedModel failed.

    `str(error)` is one line (its last error); `error.detail` its stderr.
    """

    def __init__(self, message, detail=None):
        super().__init__(message)
        self.detail = detail or message


def next_version(serving_dir):
    """The next free integer version under a model's `serving/` directory."""
    versions = [int(p.name) for p in Path(serving_dir).glob("*") if p.name.isdigit()]
    return max(versions, default=0) + 1


STALE_AFTER_S = 3600


def remove_stale_exports(serving_dir, older_than_s=STALE_AFTER_S):
    """Removes the `.export-*` temporaries a killed export left behind.

    An export writes into `serving/.export-*` and renames it into place; a
    process killed in between leaves the temporary. Those older than
    `older_than_s` seconds (so never one a running export is writing) are
    removed. Returns the removed paths.
    """
    removed = []
    now = time.time()
    for tmp in Path(serving_dir).glob(".export-*"):
        if tmp.is_dir() and now - tmp.stat().st_mtime > older_than_s:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def write_models_config(base_dir, serving_root="/models"):
    """Regenerates `base_dir/models.config` for TF Serving.

    Lists every `base_dir/<name>/serving/` that holds a version, with
    `base_path` as seen inside the serving container when `base_dir` is
    mounted at `serving_root`. The file is built with TF Serving's own
    protobuf (`ModelServerConfig` from `tensorflow-serving-api`) and written
    in its text format, so names and paths are escaped as TF Serving reads
    them.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base_dir = Path(base_dir)
    names = sorted(
        p.parent.name
        for p in base_dir.glob("*/serving")
        if any(v.name.isdigit() for v in p.iterdir())
    )
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        model = config.model_config_list.config.add()
        model.name = name
        model.base_path = f"{serving_root.rstrip('/')}/{name}/serving"
        model.model_platform = "tensorflow"
    tmp = base_dir / f".{MODELS_CONFIG}.tmp"
    tmp.write_text(text_format.MessageToString(config))
    os.replace(tmp, base_dir / MODELS_CONFIG)
    return base_dir / MODELS_CONFIG


def export(
    model,
    base_dir="saved_models",
    version=None,
    name=None,
    sample_inputs=None,
    metrics=None,
    outputs=None,
):
    """Exports a Keras model for TF Serving.

    Writes `base_dir/<name>/serving/<version>/` atomically (a temporary
    directory renamed into place; an existing version is never overwritten)
    and regenerates `base_dir/models.config`. Works from any backend.

    Args:
        model: a functional Keras model.
        base_dir: the model base directory (TF Serving mounts it).
        version: integer version; default: the next free one.
        name: serving model name; default `model.name`.
        sample_inputs: dict of input name to array used as reference inputs
            for `verify`; default: random inputs of the signature's shapes.
        metrics: optional dict of metric values recorded beside the version
            (`assets.extra/kzoo_export.json`), e.g. the validation score that
            made `ServingExport` publish it.
        outputs: names of the outputs `serving_default` returns (default:
            all). When some are left out, the `all_outputs` signature returns
            every output, for clients that ask for them.

    Returns:
        The `Path` of the new version directory.

    Example:

    >>> path = export(model, "saved_models")  # doctest: +SKIP
    >>> verify(path)  # doctest: +SKIP
    """
    name = name or model.name
    if not _NAME.match(name):
        raise ValueError(
            f"export: model name {name!r} is not a valid serving name "
            "(letters, digits, '_', '.', '-')."
        )
    if not getattr(model, "inputs", None):
        raise ValueError(
            f"export: model {name!r} has no defined inputs; build it as a "
            "functional model (keras.Input) or call it once on data first."
        )
    specs = _signature_specs(model)
    if sample_inputs is None:
        sample_inputs = _sample_inputs(specs)
    missing = {n for n, _, _ in specs} - set(sample_inputs)
    if missing:
        raise ValueError(f"export: sample_inputs lacks inputs {sorted(missing)}.")
    reference = _run_model(model, sample_inputs)
    if outputs is not None:
        outputs = list(outputs)
        unknown = [o for o in outputs if o not in reference]
        if unknown or not outputs:
            raise ValueError(
                f"export: `outputs` must name some of model {name!r}'s outputs "
                f"{sorted(reference)}; got {outputs!r}."
            )
        if set(outputs) == set(reference):
            outputs = None

    if version is not None and (
        isinstance(version, bool) or int(version) != version or int(version) < 1
    ):
        raise ValueError(f"export: version must be an integer >= 1; got {version!r}.")
    serving_dir = Path(base_dir) / name / "serving"
    serving_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_exports(serving_dir)
    version = next_version(serving_dir) if version is None else int(version)
    final = serving_dir / str(version)
    if final.exists():
        raise FileExistsError(f"export: {final} exists; versions are never overwritten.")
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=serving_dir))
    try:
        saved_model_dir = tmp / "model"
        if keras.backend.backend() == "tensorflow":
            _write_saved_model(model, saved_model_dir, outputs)
        else:
            _export_in_tensorflow_process(model, saved_model_dir, outputs)
        extra = saved_model_dir / EXTRA_DIR
        extra.mkdir(exist_ok=True)
        np.savez(
            extra / REFERENCE_FILE,
            **{f"input/{k}": v for k, v in sample_inputs.items()},
            **{f"output/{k}": v for k, v in reference.items()},
        )
        info = {
            "name": name,
            "version": version,
            "signature": SIGNATURE,
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in specs],
            "outputs": list(reference) if outputs is None else outputs,
            "all_outputs": list(reference),
            "source_backend": keras.backend.backend(),
            "keras_version": keras.__version__,
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        }
        (extra / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.rename(saved_model_dir, final)
        except OSError as e:
            raise FileExistsError(
                f"export: {final} appeared during the export; not overwritten."
            ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_models_config(base_dir)
    return final


@dataclasses.dataclass
class VerifyReport:
    """What `verify` checked.

    Attributes:
        path: the export directory.
        inputs: signature inputs `{name: (dtype, shape)}`.
        outputs: signature outputs `{name: (dtype, shape)}`.
        max_abs_diff: per output, the largest difference between the
            SavedModel's and the Keras model's outputs.
        problems: what failed (empty when the export is good).
        device: the device TensorFlow placed the graph on (a GPU if any).
        latency_ms: median time of one `serving_default` call, by batch size.
    """

    path: str
    inputs: dict
    outputs: dict
    max_abs_diff: dict
    problems: list
    device: str = ""
    latency_ms: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self):
        return not self.problems


def verify(path, model=None, atol=1e-4, rtol=1e-4):
    """Verifies a SavedModel export in a process that never imports kzoo.

    The subprocess (`python -I`, TensorFlow only) loads the SavedModel, runs
    the reference inputs recorded at export time through `serving_default`
    (and `all_outputs`, when the export has it), and scans the graph. This process then checks that

    - the outputs match the Keras model's recorded outputs (and `model`'s
      outputs on the same inputs, if `model` is given);
    - inputs and outputs have meaningful names;
    - the graph has no Python-function ops (`PyFunc`, `EagerPyFunc`), no
      `XlaCallModule` (platform-pinned), no function that must be compiled
      with XLA (`jit_compile=True`; TF Serving's CPU build does not) and no
      hard device placements;
    - kzoo was not imported by the subprocess.

    It also times `serving_default` (batch 1 and 64) on the best device
    TensorFlow sees, for the report.

    Args:
        path: an export version directory.
        model: optional Keras model to compare with as well.
        atol, rtol: tolerances of the output comparison.

    Returns:
        A `VerifyReport`.

    Raises:
        VerificationError: one line with the last problem found; its
            `detail` lists every problem.
    """
    path = Path(path)
    reference_file = path / EXTRA_DIR / REFERENCE_FILE
    if not (path / "saved_model.pb").is_file() or not reference_file.is_file():
        raise VerificationError(
            f"verify: {path} is not a kzoo SavedModel export (needs saved_model.pb "
            f"and {EXTRA_DIR}/{REFERENCE_FILE})."
        )
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "outputs.npz"
        result = subprocess.run(
            [sys.executable, "-I", str(_WORKER), str(path), str(out_file)],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise VerificationError(
                f"verify: the TensorFlow process failed on {path} "
                f"(exit {result.returncode}): {_last_line(result.stderr)}",
                detail=result.stderr,
            )
        worker = json.loads(result.stdout.strip().splitlines()[-1])
        with np.load(out_file) as served_npz:
            by_signature = {}
            for key in served_npz.files:
                signature, _, output = key.partition("/")
                by_signature.setdefault(signature, {})[output] = served_npz[key]
    with np.load(reference_file) as ref:
        inputs = {k[len("input/") :]: ref[k] for k in ref.files if k.startswith("input/")}
        expected = {k[len("output/") :]: ref[k] for k in ref.files if k.startswith("output/")}
    try:
        info = json.loads((path / EXTRA_DIR / EXPORT_INFO_FILE).read_text())
    except (OSError, ValueError):
        info = {}

    problems = list(worker["problems"])
    for name in list(worker["inputs"]) + list(worker["outputs"]):
        if _GENERIC_NAME.match(name):
            problems.append(f"signature name {name!r} is not meaningful")
    references = [("recorded Keras outputs", expected)]
    if model is not None:
        references.append(("the given model", _run_model(model, inputs)))
    # serving_default returns the outputs recorded at export (all, unless
    # some were left to the all_outputs signature), which returns them all.
    checks = [(SIGNATURE, info.get("outputs", list(expected)))]
    if ALL_OUTPUTS_SIGNATURE in by_signature or set(checks[0][1]) != set(expected):
        checks.append((ALL_OUTPUTS_SIGNATURE, list(expected)))
    diffs = {}
    for label, reference in references:
        for signature, names in checks:
            served = by_signature.get(signature, {})
            outputs = {k: v for k, v in reference.items() if k in names}
            if set(outputs) != set(served):
                problems.append(
                    f"{signature} outputs {sorted(served)} differ from {label}' {sorted(outputs)}"
                )
                continue
            for key, want in outputs.items():
                got = served[key]
                if got.shape != want.shape:
                    problems.append(f"output {key!r}: shape {got.shape} vs {want.shape} ({label})")
                    continue
                diff = float(np.max(np.abs(got.astype("float64") - want))) if got.size else 0.0
                diffs[key] = max(diffs.get(key, 0.0), diff)
                if not np.allclose(got, want, atol=atol, rtol=rtol):
                    problems.append(
                        f"output {key!r} differs from {label} (max abs diff {diff:.3g})"
                    )
    report = VerifyReport(
        path=str(path),
        inputs=worker["inputs"],
        outputs=worker["outputs"],
        max_abs_diff=diffs,
        problems=problems,
        device=worker["device"],
        latency_ms=worker["latency_ms"],
    )
    if problems:
        raise VerificationError(
            f"verify: {path} failed: {problems[-1]}"
            + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""),
            detail=f"verify: {path} failed:\n- " + "\n- ".join(problems),
        )
    return report


def exported_versions(base_dir, name):
    """`{version: recorded metrics}` of a model's exports in `base_dir`."""
    versions = {}
    for path in (Path(base_dir) / name / "serving").glob("*"):
        if path.name.isdigit():
            info_file = path / EXTRA_DIR / EXPORT_INFO_FILE
            try:
                versions[int(path.name)] = json.loads(info_file.read_text()).get("metrics", {})
            except (OSError, ValueError):
                versions[int(path.name)] = {}
    return versions
