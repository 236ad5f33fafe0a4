"""Pretrained presets: directories in KerasHub's layout, verified on load.

A preset directory holds

- `config.json`: the Keras-serialized model (`keras.saving.serialize_keras_object`),
- `model.weights.h5`: the weights (`model.save_weights`),
- `metadata.json`: builder and arguments, the sha256 manifest of every other
  file, the training command, dataset, metrics and the keras/backend versions.

Every zoo artifact is stored this way: models, and learned optimizers (whose
config is their architecture and whose weights are their meta-parameters).
Loading checks every file against the manifest before Keras reads anything (an
edited config is refused like a corrupt weights file), and deserializes in
Keras safe mode (no lambdas, no pickled code). Names resolve only in the zoo
directories (`resolve`): the user's zoo (`$KZOO_ZOO`, default `~/.kzoo/zoo`),
where `kzoo train` writes, then the zoo shipped with kzoo.

Finding, verifying and describing presets needs no deep-learning framework
(`kzoo list` and `kzoo info` stay fast); Keras is imported to build or save a
model.
"""

import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)
# The weights' file of each kind of zoo artifact (`kzoo.zoo.registry.KINDS`).
WEIGHTS_FILES = {"model": WEIGHTS_FILE, "optimizer": "optimizer.weights.npz"}
ZOO_ENV = "KZOO_ZOO"
USER_ZOO_DEFAULT = "~/.kzoo/zoo"


class PresetError(ValueError):
    """A preset is missing, incomplete, corrupt or does not fit the model."""


def user_zoo():
    """The user's zoo: where `kzoo train` writes, searched before the shipped zoo.

    `$KZOO_ZOO` if set, else `~/.kzoo/zoo`. It need not exist yet.
    """
    return Path(os.environ.get(ZOO_ENV) or USER_ZOO_DEFAULT).expanduser()


def shipped_zoos():
    """The zoo shipped with kzoo: inside the installed package, or a checkout's
    `saved_models/` (editable installs)."""
    package = Path(__file__).resolve().parent.parent
    return [d for d in (package / "saved_models", package.parent / "saved_models") if d.is_dir()]


def zoo_dirs():
    """Directories searched for presets by name, in order: `user_zoo()` (if it
    exists), then `shipped_zoos()`."""
    return [d for d in [user_zoo(), *shipped_zoos()] if d.is_dir()]


def _presets_in(zoo):
    return {p.name: p for p in zoo.iterdir() if (p / METADATA_FILE).is_file()}


def available_presets():
    """Names of the presets found in `zoo_dirs()`."""
    names = set()
    for zoo in zoo_dirs():
        names |= set(_presets_in(zoo))
    return sorted(names)


def locations(name):
    """`(directory, "user" | "shipped")` of every preset named `name`, in search
    order; the first one is what `resolve(name)` returns and shadows the rest."""
    found = []
    shipped = {d.resolve() for d in shipped_zoos()}
    for zoo in zoo_dirs():
        if name in _presets_in(zoo):
            found.append((zoo / name, "shipped" if zoo.resolve() in shipped else "user"))
    return found


def looks_like_path(preset):
    """Whether `preset` is written as a path: it contains a separator, starts
    with `.` or `~`, or is absolute. Anything else is a zoo name."""
    text = str(preset)
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return (
        isinstance(preset, os.PathLike)
        or any(sep in text for sep in separators)
        or text.startswith((".", "~"))
        or os.path.isabs(text)
    )


def resolve(preset):
    """Returns the directory of a preset given by zoo name or by path.

    A bare name (`"lnlstm_digits"`) is looked up only in `zoo_dirs()`, never
    in the current directory, so a lookalike folder there cannot stand in for
    a zoo preset. A path must look like one (`./lnlstm_digits`,
    `~/presets/x`, `/abs/x`, `dir/x`).
    """
    if looks_like_path(preset):
        path = Path(preset).expanduser()
        if path.is_dir():
            return path
        raise PresetError(f"No preset directory {str(preset)!r}.")
    found = locations(str(preset))
    if found:
        return found[0][0]
    raise PresetError(
        f"No preset named {str(preset)!r} in the zoo ({', '.join(map(str, zoo_dirs()))}); "
        f"available: {', '.join(available_presets()) or 'none'}. A directory must be "
        "given as a path (e.g. ./name)."
    )


def training_target(name, zoo_dir=None, overwrite=False):
    """Where `kzoo train` writes the preset `name`: `zoo_dir/name`.

    Args:
        name: the preset name.
        zoo_dir: the zoo to write to; default `user_zoo()`, which name
            lookups search first, so `kzoo evaluate NAME` then finds it.
        overwrite: allow replacing an existing preset there.

    Raises:
        FileExistsError: if a preset is there and `overwrite` is false.
    """
    target = Path(zoo_dir).expanduser() / name if zoo_dir else user_zoo() / name
    if (target / METADATA_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{target} already holds a preset; pass overwrite=True "
            "(CLI: --overwrite) to retrain it."
        )
    return target


def epochs_or_default(epochs, default):
    """`epochs` if given (an int >= 1, else `ValueError`), or `default`."""
    if epochs is None:
        return default
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1; got {epochs!r}.")
    return epochs


def sha256(path):
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(preset, kind="model"):
    """Reads and verifies a preset; returns `(directory, metadata)`.

    Every file of the preset except `metadata.json` itself (the config, the
    weights, any extra) must be listed in the metadata's `sha256` manifest
    and match it; the config and the weights must be listed.

    Args:
        preset: preset name or directory (see `resolve`).
        kind: what the preset must hold: `"model"` or `"optimizer"` (the
            metadata's `kind`; model presets may omit it), or `None` for
            either. The weights' file is the kind's (`WEIGHTS_FILES`).

    Raises:
        PresetError: naming the preset and the file, if the preset is of
            another kind, a file is missing, unlisted or differs from its
            recorded sha256, or the metadata is unreadable.
    """
    directory = resolve(preset)
    label = f"Preset {str(preset)!r} ({directory})"
    if not (directory / METADATA_FILE).is_file():
        raise PresetError(f"{label} is incomplete: missing {METADATA_FILE}.")
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
        manifest = metadata["sha256"]
        if not isinstance(manifest, dict):
            raise TypeError("sha256 is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PresetError(
            f"{label}: {METADATA_FILE} is unreadable or has no sha256 manifest ({e})."
        ) from e
    found = metadata.get("kind", "model")
    if found not in WEIGHTS_FILES or (kind is not None and found != kind):
        raise PresetError(f"{label} is of kind {found!r}, not {kind or 'a known kind'!r}.")
    weights_file = WEIGHTS_FILES[found]
    missing = [f for f in (CONFIG_FILE, weights_file) if not (directory / f).is_file()]
    if missing:
        raise PresetError(f"{label} is incomplete: missing {', '.join(missing)}.")
    unlisted = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and p.name != METADATA_FILE and p.name not in manifest
    )
    unlisted += [f for f in (CONFIG_FILE, weights_file) if f not in manifest]
    if unlisted:
        raise PresetError(
            f"{label}: {', '.join(sorted(set(unlisted)))} not covered by the "
            f"sha256 manifest of {METADATA_FILE}; refusing to load it."
        )
    for name, expected in sorted(manifest.items()):
        file = directory / name
        if Path(name).name != name or not file.is_file():
            raise PresetError(f"{label}: {name} is listed in its manifest but missing.")
        actual = sha256(file)
        if actual != expected:
            raise PresetError(
                f"{label}: checksum mismatch for {name} (expected sha256 {expected}, "
                f"found {actual}). The file is corrupt or was edited; refusing to load it."
            )
    return directory, metadata


def load_weights(model, preset, builder=None, builder_args=None, defaults=None):
    """Loads a verified preset's weights into `model`.

    Args:
        model: a built Keras model.
        preset: preset name or directory.
        builder: if given, the builder name the preset must have been made by.
        builder_args: if given, the builder arguments the preset must match.
        defaults: the builder's defaults: an argument the preset does not
            record (added to the builder after the preset was saved) counts
            as its default.

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
        recorded = {**(defaults or {}), **metadata.get("builder_args", {})}
        diff = {
            k: (recorded.get(k), v)
            for k, v in builder_args.items()
            if k != "name" and recorded.get(k) != v
        }
        if diff:
            detail = ", ".join(
                f"{k}: preset {a!r} vs requested {b!r}" for k, (a, b) in diff.items()
            )
            raise PresetError(f"Preset {str(directory)!r} does not fit {builder}: {detail}.")
    try:
        model.load_weights(directory / WEIGHTS_FILE)
    except (ValueError, KeyError, OSError) as e:
        raise PresetError(
            f"Weights of preset {str(directory)!r} do not fit model {model.name!r}: {e}"
        ) from e
    return metadata


def load_preset(preset):
    """Builds the model stored in a preset (safe mode) and loads its weights.

    Example:

    >>> load_preset("lnlstm_digits").name
    'lnlstm_digits'
    """
    directory, _ = read_metadata(preset)
    import keras

    import kzoo.applications  # noqa: F401  (registers kzoo's and keras-cv's models)
    import kzoo.layers  # noqa: F401  (registers kzoo's layers with Keras)
    from kzoo.compat import ObjectSharingScope

    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        with ObjectSharingScope():  # e.g. a FilterBasis shared by several layers
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as e:  # safe-mode refusals, unknown classes, bad arguments
        raise PresetError(
            f"Preset {str(preset)!r} ({directory}): its {CONFIG_FILE} does not deserialize "
            f"in Keras safe mode: {type(e).__name__}: {e}"
        ) from e
    load_weights(model, directory)
    return model


def write_preset(directory, write_files, metadata, overwrite=False):
    """Writes a preset directory safely.

    `write_files(tmp)` writes the config, the weights and any other file into
    the temporary directory `tmp` and returns the weights' file name; every
    file is recorded in the metadata's sha256 manifest. Each file is then moved
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
    import keras

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
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        if weights_file not in files:
            raise FileNotFoundError(f"write_preset: {weights_file} was not written.")
        record = {
            "name": directory.name,
            **metadata,
            "sha256": {name: sha256(tmp / name) for name in files},
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
            "python_version": platform.python_version(),
            "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
        directory.mkdir(exist_ok=True)
        for name in [*files, METADATA_FILE]:
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

    import keras

    from kzoo.compat import ObjectSharingScope

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
