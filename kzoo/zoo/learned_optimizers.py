"""Zoo learned optimizers: meta-training and scoring (the optimizer kind's hooks).

A learned optimizer's entry names its meta-task (`kzoo.zoo.tasks.MetaTask`:
the problem family and the schedule) and its `MetaTrainer` arguments (the
architecture and the meta-training settings); its preset holds the
architecture and the meta-parameters `phi` (`kzoo.optimizers.learned`).
"""

import dataclasses
import sys
import time

import keras

from kzoo.optimizers import learned
from kzoo.optimizers import meta
from kzoo.optimizers import problems
from kzoo.zoo import presets
from kzoo.zoo.tasks import TASKS


def _optimizer_entry(entry):
    if entry.kind != "optimizer":
        raise ValueError(f"{entry.name!r} is a model, not a learned optimizer.")
    return entry, TASKS[entry.task]


def train(
    entry,
    zoo_dir=None,
    epochs=None,
    overwrite=False,
    seed=0,
    log_dir=None,
    distribute=False,
    verbose=1,
):
    """Meta-trains a registered learned optimizer and saves it to the zoo.

    Args:
        entry: the optimizer's `Entry`.
        zoo_dir: the zoo directory; the preset goes to `zoo_dir/name`
            (default: the user's zoo, `kzoo.zoo.presets.user_zoo()`).
        epochs: maximum epochs (default: the task's).
        overwrite: replace an existing preset.
        seed: seed of `phi`'s initialization and the training problems.
        log_dir: TensorBoard directory.
        distribute: must be false: meta-training runs on one device.
        verbose: progress output.

    Returns:
        `(phi, metadata)`.
    """
    entry, task = _optimizer_entry(entry)
    if distribute:
        raise ValueError(
            f"{entry.name}: data-parallel training applies to zoo models; "
            "meta-training runs on one device."
        )
    target = presets.training_target(entry.name, zoo_dir, overwrite)
    epochs = presets.epochs_or_default(epochs, task.epochs)
    keras.utils.set_random_seed(seed)
    trainer = meta.MetaTrainer(problems.FAMILIES[task.family](), seed=seed, **entry.args)
    start = time.time()
    history = trainer.fit(
        epochs=epochs,
        episodes_per_epoch=task.episodes_per_epoch,
        patience=task.patience,
        log_dir=log_dir,
        verbose=verbose,
    )
    seconds = time.time() - start
    test = trainer.run(trainer.best_phi, meta.TEST_SEED, trainer.validation_problems)
    architecture = {k: trainer.architecture[k] for k in learned.ARCHITECTURE_KEYS}
    metadata = {
        "description": entry.description,
        "task": task.name,
        "problem_family": task.family,
        "dataset": task.dataset,
        "training_command": f"KERAS_BACKEND={keras.backend.backend()} kzoo train {entry.name} "
        f"--epochs {epochs} --seed {seed}",
        "meta_training": {
            **{k: v for k, v in dataclasses.asdict(trainer).items() if k != "problem"},
            "episodes_per_epoch": task.episodes_per_epoch,
            "patience": task.patience,
            "epochs_run": len(history["meta_loss"]),
            "best_epoch": history["best_epoch"],
            "seconds": round(seconds, 1),
            "history": history,
        },
        "metrics": {
            "validation": {"final_loss": min(history["validation_final_loss"])},
            "test": _scores(test),
        },
    }
    metadata = learned.save_meta_parameters(
        target, trainer.best_phi, architecture, metadata, overwrite=overwrite
    )
    if verbose:
        print(f"Saved learned optimizer {target}", file=sys.stderr)
    return trainer.best_phi, metadata


def _scores(curves):
    return {
        "final_loss": float(curves[-1].mean()),
        "mean_loss": float(curves[1:].mean()),
        "problems": int(curves.shape[1]),
    }


def evaluate(entry, verbose=0):
    """Re-scores the zoo's preset of a learned optimizer on its task's test
    problems (as many as recorded at training).

    Returns:
        `{"final_loss", "mean_loss", "problems"}`.
    """
    entry, task = _optimizer_entry(entry)
    _, metadata = presets.read_metadata(entry.name, kind="optimizer")
    phi, architecture = learned.load_meta_parameters(entry.name)
    trainer = meta.MetaTrainer(problems.FAMILIES[task.family](), **{**entry.args, **architecture})
    return _scores(trainer.run(phi, meta.TEST_SEED, metadata["metrics"]["test"]["problems"]))


def export(entry, base_dir=None, version=None):
    """Learned optimizers are not served: raises `ValueError`."""
    raise ValueError(
        f"{entry.name} is a learned optimizer; only models export for TF Serving "
        "(use it in training: LSTMOptimizer.from_preset)."
    )
