"""Zoo learned optimizers: meta-training and scoring (the optimizer kind's hooks).

A learned optimizer's entry names its meta-task (`kzoo.zoo.tasks.MetaTask`:
the problem family and the schedule) and its `MetaTrainer` arguments (the
architecture and the meta-training settings); its preset holds the
architecture and the meta-parameters `phi` (`kzoo.optimizers.learned`).
"""

import sys

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


CHECKPOINTS = ".checkpoints"


def meta_trainer(entry, seed=0):
    """The `MetaTrainer` of a learned-optimizer entry: its task's problem
    family, its arguments, and its `init_from` preset as the starting `phi`."""
    entry, task = _optimizer_entry(entry)
    return meta.MetaTrainer(
        problems.FAMILIES[task.family](), seed=seed, init_from=entry.init_from, **entry.args
    )


def checkpoint_dir(target):
    """Where the meta-training of the preset `target` keeps its checkpoint:
    `<zoo>/.checkpoints/<name>` (a run's whole state after each epoch)."""
    return target.parent / CHECKPOINTS / target.name


def train(
    entry,
    zoo_dir=None,
    epochs=None,
    overwrite=False,
    seed=0,
    log_dir=None,
    distribute=False,
    verbose=1,
    resume=False,
):
    """Meta-trains a registered learned optimizer and saves it to the zoo.

    The run's state is checkpointed after every epoch
    (`checkpoint_dir(target)`); `resume=True` continues the interrupted or
    finished run there (up to `epochs` in all) and ends exactly as an
    uninterrupted run would.

    Args:
        entry: the optimizer's `Entry`.
        zoo_dir: the zoo directory; the preset goes to `zoo_dir/name`
            (default: the user's zoo, `kzoo.zoo.presets.user_zoo()`).
        epochs: maximum epochs in all (default: the task's).
        overwrite: replace an existing preset, and start over where a
            checkpoint exists.
        seed: seed of `phi`'s initialization and the training problems.
        log_dir: TensorBoard directory.
        distribute: must be false: meta-training runs on one device.
        verbose: progress output.
        resume: continue from the checkpoint.

    Returns:
        `(phi, metadata)`.

    Raises:
        FileExistsError: a checkpoint exists and neither `resume` nor
            `overwrite` says what to do with it.
        FileNotFoundError: `resume` without a checkpoint.
    """
    entry, task = _optimizer_entry(entry)
    if distribute:
        raise ValueError(
            f"{entry.name}: data-parallel training applies to zoo models; "
            "meta-training runs on one device."
        )
    target = presets.training_target(entry.name, zoo_dir, overwrite)
    checkpoint = checkpoint_dir(target)
    epochs = presets.epochs_or_default(epochs, task.epochs)
    keras.utils.set_random_seed(seed)
    trainer = meta_trainer(entry, seed)
    if resume:
        trainer.restore_checkpoint(checkpoint)
    elif (checkpoint / meta.CHECKPOINT_STATE).exists() and not overwrite:
        raise FileExistsError(
            f"{checkpoint} holds the checkpoint of an earlier run; pass resume=True "
            "(CLI: --resume) to continue it or overwrite=True (CLI: --overwrite) to start over."
        )
    history = trainer.fit(
        epochs=epochs,
        episodes_per_epoch=task.episodes_per_epoch,
        patience=task.patience,
        log_dir=log_dir,
        verbose=verbose,
        checkpoint_dir=checkpoint,
    )
    test = trainer.run_all(trainer.best_phi, meta.TEST_SEED, trainer.validation_problems)
    architecture = {k: trainer.architecture[k] for k in learned.ARCHITECTURE_KEYS}
    backend_name = keras.backend.backend()
    main_backend = max(trainer.backends, key=trainer.backends.get, default=backend_name)
    settings = {k: v for k, v in trainer.settings().items() if k != "problem"}
    metadata = {
        "description": entry.description,
        "task": task.name,
        "problem_family": task.family,
        "dataset": task.dataset,
        "training_command": f"KERAS_BACKEND={main_backend} kzoo train {entry.name} "
        f"--epochs {epochs} --seed {seed}",
        "meta_training": {
            **settings,
            "episodes_per_epoch": task.episodes_per_epoch,
            "patience": task.patience,
            "epochs_run": len(history["meta_loss"]),
            "best_epoch": history["best_epoch"],
            "seconds": round(trainer.seconds, 1),
            "skipped_meta_updates": trainer.skipped,
            "epochs_per_backend": trainer.backends,
            "test_backend": backend_name,
            "history": history,
        },
        "metrics": {
            "validation": {"final_loss": min(history["validation_final_loss"])},
            "test": _scores(trainer, test),
        },
    }
    metadata = learned.save_meta_parameters(
        target, trainer.best_phi, architecture, metadata, overwrite=overwrite
    )
    if verbose:
        print(f"Saved learned optimizer {target}", file=sys.stderr)
    return trainer.best_phi, metadata


def _scores(trainer, curves):
    """Test scores of `MetaTrainer.run_all`'s curves: the trainer's `score`
    as `final_loss` / `mean_loss` and, for a mixture, each family's mean final
    and initial loss."""
    final, mean = trainer.score(curves)
    scores = {
        "final_loss": final,
        "mean_loss": mean,
        "problems": int(next(iter(curves.values())).shape[1]),
    }
    if len(curves) > 1:
        scores["families"] = {
            name: {"final_loss": float(c[-1].mean()), "initial_loss": float(c[0].mean())}
            for name, c in curves.items()
        }
    return scores


def evaluate(entry, verbose=0):
    """Re-scores the zoo's preset of a learned optimizer on its task's test
    problems (as many as recorded at training).

    Returns:
        `{"final_loss", "mean_loss", "problems"}` (and, for a mixture,
        `"families"`).
    """
    entry, task = _optimizer_entry(entry)
    _, metadata = presets.read_metadata(entry.name, kind="optimizer")
    phi, architecture = learned.load_meta_parameters(entry.name)
    trainer = meta.MetaTrainer(problems.FAMILIES[task.family](), **{**entry.args, **architecture})
    test = trainer.run_all(phi, meta.TEST_SEED, metadata["metrics"]["test"]["problems"])
    return _scores(trainer, test)


def export(entry, base_dir=None, version=None):
    """Learned optimizers are not served: raises `ValueError`."""
    raise ValueError(
        f"{entry.name} is a learned optimizer; only models export for TF Serving "
        "(use it in training: LSTMOptimizer.from_preset)."
    )
