"""Pretrained presets: directories in KerasHub's layout, verified on load.

A preset directory holds

- `config.json`: the Keras-serialized model (`keras.saving.serialize_keras_object`),
- `model.weights.h5`: the weights (`model.save_weights`),
- `metadata.json`: builder and arguments, sha256 of the weights, the training
  command, dataset, metrics and the keras/backend versions.

Loading checks that every file is there and that the weights' sha256 matches
the metadata before Keras reads them, and deserializes in Keras safe mode (no
lambdas, no pickled code).
"""

import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import keras
from keras.src.saving.serialization_lib import ObjectSharingScope

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
ZOO_ENV = "KZOO_ZOO"


class PresetError(ValueError):
    """A preset is missing, incomplete, corrupt or does not fit the model."""


def zoo_dirs():
    """Directories searched for presets, in order.

    `$KZOO_ZOO` (if set), the zoo shipped inside the installed package, and the
    `saved_models/` directory of a source checkout.
    """
    package = Path(__file__).resolve().parent.parent
    dirs = []
    if os.environ.get(ZOO_ENV):
        dirs.append(Path(os.environ[ZOO_ENV]))
    dirs += [package / "saved_models", package.parent / "saved_models"]
    return [d for d in dirs if d.is_dir()]


def available_presets():
    """Names of the presets found in `zoo_dirs()`."""
    names = set()
    for zoo in zoo_dirs():
        names |= {p.name for p in zoo.iterdir() if (p / METADATA_FILE).exists()}
    return sorted(names)


def resolve(preset):
    """Returns the directory of a preset given by name or path."""
    path = Path(preset)
    if path.is_dir():
        return path
    if os.sep not in str(preset):
        for zoo in zoo_dirs():
            if (zoo / preset).is_dir():
                return zoo / preset
    raise PresetError(
        f"No preset {str(preset)!r}: it is neither a directory nor the name of "
        f"a preset in the zoo (available: {', '.join(available_presets()) or 'none'})."
    )


def sha256(path):
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(preset, weights_file=WEIGHTS_FILE, kind="model"):
    """Reads and verifies a preset; returns `(directory, metadata)`.

    Args:
        preset: preset name or directory.
        weights_file: the file whose sha256 is checked: a model's
            `model.weights.h5` or a learned optimizer's meta-parameters.
        kind: what the preset must hold: `"model"` or `"optimizer"` (the
            metadata's `kind`; model presets may omit it).

    Raises:
        PresetError: if the preset is of another kind, a file is missing, the
            metadata is unreadable, or the weights' sha256 differs from the
            one recorded.
    """
    directory = resolve(preset)
    try:
        found = json.loads((directory / METADATA_FILE).read_text()).get("kind", "model")
    except (OSError, ValueError, AttributeError):
        found = kind  # reported below as missing or unreadable
    if found != kind:
        raise PresetError(f"Preset {str(directory)!r} is of kind {found!r}, not {kind!r}.")
    missing = [f for f in (CONFIG_FILE, weights_file, METADATA_FILE)
               if not (directory / f).is_file()]
    if missing:
        raise PresetError(
            f"Preset {str(directory)!r} is incomplete: missing {', '.join(missing)}."
        )
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
        expected = metadata["sha256"][weights_file]
    except (ValueError, KeyError, TypeError) as e:
        raise PresetError(
            f"Preset {str(directory)!r}: {METADATA_FILE} is unreadable or has no "
            f"sha256 for {weights_file} ({e})."
        ) from e
    actual = sha256(directory / weights_file)
    if actual != expected:
        raise PresetError(
            f"Preset {str(directory)!r}: checksum mismatch for {weights_file} "
            f"(expected sha256 {expected}, found {actual}). The file is corrupt "
            "or was replaced; refusing to load it."
        )
    return directory, metadata


def load_weights(model, preset, builder=None, builder_args=None):
    """Loads a verified preset's weights into `model`.

    Args:
        model: a built Keras model.
        preset: preset name or directory.
        builder: if given, the builder name the preset must have been made by.
        builder_args: if given, the builder arguments the preset must match.

    Raises:
        PresetError: on any verification failure or weight mismatch.
    """
    directory, metadata = read_metadata(preset)
    if builder is not None and metadata.get("builder") != builder:
        raise PresetError(
            f"Preset {str(directory)!r} holds weights of "
            f"{metadata.get('builder')}, not of {builder}."
        )
    if builder_args is not None:
        recorded = metadata.get("builder_args", {})
        diff = {
            k: (recorded.get(k), v)
            for k, v in builder_args.items()
            if k != "name" and recorded.get(k) != v
        }
        if diff:
            detail = ", ".join(
                f"{k}: preset {a!r} vs requested {b!r}" for k, (a, b) in diff.items()
            )
            raise PresetError(
                f"Preset {str(directory)!r} does not fit {builder}: {detail}."
            )
    try:
        model.load_weights(directory / WEIGHTS_FILE)
    except (ValueError, KeyError, OSError) as e:
        raise PresetError(
            f"Weights of preset {str(directory)!r} do not fit model "
            f"{model.name!r}: {e}"
        ) from e
    return metadata


def load_preset(preset):
    """Builds the model stored in a preset (safe mode) and loads its weights.

    Example:

    >>> model = load_preset("lnlstm_digits")  # doctest: +SKIP
    """
    directory, _ = read_metadata(preset)
    config = json.loads((directory / CONFIG_FILE).read_text())
    with ObjectSharingScope():  # e.g. a FilterBasis shared by several layers
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    load_weights(model, directory)
    return model


def write_preset(directory, write_files, metadata, overwrite=False):
    """Writes a preset directory safely.

    `write_files(tmp)` writes the config and the weights into the temporary
    directory `tmp` and returns the weights' file name. Each file is then moved
    into place, the metadata (with the weights' sha256) last, so an
    interrupted save leaves a preset that fails its checksum rather than one
    that loads stale weights. Other content of the directory (e.g. `serving/`
    exports) is kept.

    Args:
        directory: target directory.
        write_files: the function writing the files.
        metadata: dict merged into the recorded metadata.
        overwrite: replace an existing preset; otherwise an existing
            directory raises `FileExistsError`.

    Returns:
        The metadata written.
    """
    directory = Path(directory)
    if (directory / METADATA_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"Preset {str(directory)!r} exists; pass overwrite=True (CLI: "
            "--overwrite) to replace it."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        weights_file = write_files(tmp)
        record = {
            "name": directory.name,
            **metadata,
            "sha256": {weights_file: sha256(tmp / weights_file)},
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
            "python_version": platform.python_version(),
            "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
        directory.mkdir(exist_ok=True)
        for name in (CONFIG_FILE, weights_file, METADATA_FILE):
            os.replace(tmp / name, directory / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return record


def save_preset(model, directory, metadata, overwrite=False):
    """Writes `model` as a preset directory (see `write_preset`).

    Args:
        model: the Keras model.
        directory: target directory.
        metadata: dict merged into the recorded metadata (builder,
            builder_args, training command, dataset, metrics, ...).
        overwrite: replace an existing preset; otherwise an existing
            directory raises `FileExistsError`.

    Returns:
        The metadata written.
    """

    def write(tmp):
        # A preset is for inference and fine-tuning: the architecture and
        # weights only, without the training run's compile state or
        # optimizer variables.
        # Keras' own `.keras` format records objects shared by several layers
        # (e.g. a FilterBasis) inside this scope, so they stay shared.
        with ObjectSharingScope():
            config = keras.saving.serialize_keras_object(model)
        config.pop("compile_config", None)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        with ObjectSharingScope():
            bare = keras.saving.deserialize_keras_object(config, safe_mode=False)
        bare.set_weights(model.get_weights())
        bare.save_weights(tmp / WEIGHTS_FILE)
        return WEIGHTS_FILE

    metadata = {**metadata, "parameter_count": int(model.count_params())}
    return write_preset(directory, write, metadata, overwrite=overwrite)
