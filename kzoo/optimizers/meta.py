"""Meta-training of the learned optimizer (Andrychowicz et al., 2016, section 2).

The meta-loss of an episode is `L(phi) = E_f [sum_t w_t f(theta_t)]` with
`w_t = 1`, where `theta_t` follows the learned optimizer (`learned.step`) for
a horizon of (by default) 100 steps. It is minimized with Adam by truncated
backpropagation through time: the horizon is cut into unrolls of 20 steps,
`phi` is updated after each, and `theta` and the optimizer state are carried
to the next unroll as constants. The optimizee's gradients are constants to
the meta-gradient (no second derivatives). After each epoch `phi` is frozen and
scored on a fixed set of held-out problems; the best `phi` is kept and training
stops early when it stops improving.

For a learned optimizer meant to generalize (`lstm_optimizer_general`), the
same trainer takes a `problems.Mixture` (one family drawn per episode),
horizons drawn up to `max_horizon` (truncated unrolls far past the unroll
length), a scale-free meta-loss (`objective="log_ratio"`), random restarts of
the optimizer state on half-trained problems, and meta-gradient clipping; its
whole state is checkpointed after every epoch so a run of hours resumes where
it stopped (`save_checkpoint`, `restore_checkpoint`). See
`docs/learned_optimizer_general.md`.

The few backend-specific operations (autodiff through the unroll, compilation)
are in `kzoo.backend`; the unroll itself is `keras.ops` and runs on
TensorFlow, JAX and PyTorch.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.optimizers import learned

VALIDATION_SEED = 1_000_001
TEST_SEED = 2_000_003


def _flatten(tensors):
    return ops.concatenate([ops.reshape(t, (-1,)) for t in tensors], axis=0)


def _unflatten(flat, like):
    out, start = [], 0
    for t in like:
        size = int(np.prod(t.shape))
        out.append(ops.reshape(flat[start : start + size], t.shape))
        start += size
    return out


def sample_episode(problem, rng, num_problems, horizon):
    """`(params, constants, batches)` of `num_problems` fresh problems.

    `params` and `constants` are tensors; `batches` (numpy, `horizon + 1`
    steps) stays on the host and is sliced per unroll.
    """
    params, constants = problem.sample(rng, num_problems)
    batches = problem.batches(rng, num_problems, horizon + 1)
    return (
        [ops.convert_to_tensor(p) for p in params],
        {k: ops.convert_to_tensor(v) for k, v in constants.items()},
        batches,
    )


def optimize(optimizer, problem, seed, num_problems, horizon=100):
    """Loss curves of any Keras optimizer on a batch of problems.

    The problems are those `MetaTrainer.run` draws from the same seed, so
    hand-designed optimizers (SGD, Adam, ...) and `LSTMOptimizer` itself are
    compared on identical problems. Each step is one compiled call (see
    `kzoo.backend.optimizer_stepper`).

    Args:
        optimizer: an unbuilt `keras.optimizers.Optimizer`.
        problem: the problem family.
        seed: seed of the problems.
        num_problems: number of problems.
        horizon: number of steps.

    Returns:
        numpy `(horizon + 1, num_problems)` losses at `theta_0..theta_T`.
    """
    params, constants, batches = sample_episode(
        problem, np.random.default_rng(seed), num_problems, horizon
    )
    step_fn = backend.optimizer_stepper(
        optimizer, params, lambda p, batch: problem.loss(p, constants, batch)
    )
    curves = []
    for t in range(horizon + 1):
        batch = {k: ops.convert_to_tensor(v[t]) for k, v in batches.items()}
        curves.append(ops.convert_to_numpy(step_fn(batch)))
    return np.stack(curves)


LOG_RATIO_FLOOR = 1e-3


def unroll(
    phi,
    params,
    state,
    constants,
    batches,
    reference,
    problem,
    steps,
    architecture,
    objective="sum",
    floor=LOG_RATIO_FLOOR,
):
    """`steps` learned-optimizer steps on a batch of problems.

    Args:
        phi: meta-parameters (list of tensors).
        params: the problems' parameters (list, leading problem axis `K`).
        state: the optimizer state for the flattened parameters.
        constants: the problems' constants.
        batches: per-step data with a leading axis of `steps + 1`.
        reference: `(K,)` losses that `"log_ratio"` divides by; entries
            `<= 0` take this unroll's first loss.
        problem: the problem family (`kzoo.optimizers.problems`).
        steps: number of steps.
        architecture: `output_scale`, `preprocess`, `exponent`, `inputs` of
            the optimizer.
        objective: `"sum"`, the paper's `sum_{t=1..steps} f(theta_t)` (mean
            over problems), or `"log_ratio"`, the mean over steps and
            problems of `log(f(theta_t) / reference + floor)`, which weighs
            problems of any loss scale alike.
        floor: the floor of `"log_ratio"`.

    Returns:
        `(meta_loss, (params, state, losses, reference))`: the meta-loss,
        the final parameters and state, the losses `(steps + 1, K)` at
        `theta_0 .. theta_steps` and the reference used.
    """

    # One traced step in a loop (not `steps` copies): compiling a long unroll
    # costs what a short one does.
    def body(t, carry):
        params, state, losses = carry
        batch = {k: v[t] for k, v in batches.items()}
        loss, grads = backend.value_and_stopped_gradient(
            lambda p: problem.loss(p, constants, batch), params
        )
        # Write row t (`slice_update` has no gradient on TensorFlow).
        row = ops.one_hot(t, steps, dtype=losses.dtype)[:, None]
        losses = losses + row * loss[None]
        update, state = learned.step(
            phi,
            _flatten(grads),
            state,
            output_scale=architecture["output_scale"],
            preprocess=architecture["preprocess"],
            exponent=architecture["exponent"],
            inputs=architecture["inputs"],
        )
        params = [p + u for p, u in zip(params, _unflatten(update, params))]
        return params, state, losses

    losses = ops.zeros((steps, ops.shape(params[0])[0]), params[0].dtype)
    params, state, losses = ops.fori_loop(0, steps, body, (list(params), list(state), losses))
    last = problem.loss(params, constants, {k: v[steps] for k, v in batches.items()})
    losses = ops.concatenate([losses, last[None]], axis=0)
    reference = ops.where(reference > 0, reference, ops.stop_gradient(losses[0]))
    if objective == "sum":
        meta_loss = ops.mean(ops.sum(losses[1:], axis=0))
    else:
        ratio = ops.minimum(losses[1:] / reference, LOG_RATIO_CAP)
        meta_loss = ops.mean(ops.log(ratio + floor))
    return meta_loss, (params, state, losses, reference)


LOG_RATIO_CAP = 1e4
OBJECTIVES = ("sum", "log_ratio")
CHECKPOINT_ARRAYS = "checkpoint.npz"
CHECKPOINT_STATE = "checkpoint.json"


def _members(problem):
    return problem.members if hasattr(problem, "draw") else [problem]


@dataclasses.dataclass
class MetaTrainer:
    """Meta-trains `phi` on a problem family or a `problems.Mixture`.

    Args:
        problem: a problem family instance, or a `Mixture` of them (each
            episode draws one member; validation covers every member).
        units, num_layers, preprocess, exponent, output_scale, inputs: the
            optimizer's architecture (see `LSTMOptimizer`).
        horizon: optimization steps per episode (100).
        unroll: truncation length of BPTT (20).
        num_problems: problems optimized in parallel per episode.
        learning_rate: Adam learning rate of the meta-optimizer.
        validation_problems: size of the fixed held-out set (per member).
        seed: seed of `phi`'s initialization and of the training problems.
        max_horizon: if set, each training episode's horizon is drawn
            log-uniformly from `[horizon, max_horizon]` (a multiple of
            `unroll`), so truncated unrolls reach far past `unroll` steps.
        objective: the meta-loss of `unroll`, `"sum"` or `"log_ratio"`.
        restart_probability: chance, at each unroll after an episode's first,
            of zeroing the optimizer state (and taking the current loss as
            the new reference): the problem is then half trained and the
            optimizer fresh, as when it fine-tunes a trained model.
        validation_horizon: steps of the validation runs (default `horizon`).
        clipnorm: if set, the meta-gradient's global norm is clipped to it.
        init_from: a learned-optimizer preset whose `phi` (of the same
            architecture) meta-training starts from, instead of a random one.
        log_ratio_floor: if set, the floor added to the loss ratios of the
            `"log_ratio"` meta-loss and of the validation score, so a
            problem's progress below that fraction of its initial loss earns
            little; by default the meta-loss adds `LOG_RATIO_FLOOR` and the
            score nothing (the first general presets' setting).
    """

    problem: object
    units: int = 20
    num_layers: int = 2
    preprocess: bool = True
    exponent: float = 10.0
    output_scale: float = 1.0
    horizon: int = 100
    unroll: int = 20
    num_problems: int = 32
    learning_rate: float = 1e-3
    validation_problems: int = 128
    seed: int = 0
    max_horizon: int = None
    objective: str = "sum"
    restart_probability: float = 0.0
    validation_horizon: int = None
    clipnorm: float = None
    init_from: str = None
    inputs: str = "gradient"
    log_ratio_floor: float = None

    def __post_init__(self):
        for name in ("horizon", "max_horizon", "validation_horizon"):
            value = getattr(self, name)
            if value is not None and value % self.unroll:
                raise ValueError(
                    f"MetaTrainer: {name} {value} is not a multiple of unroll {self.unroll}."
                )
        if self.max_horizon is not None and self.max_horizon < self.horizon:
            raise ValueError(
                f"MetaTrainer: max_horizon {self.max_horizon} is below horizon {self.horizon}."
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"MetaTrainer: objective must be one of {OBJECTIVES}, got {self.objective!r}."
            )
        if hasattr(self.problem, "draw") and self.objective != "log_ratio":
            raise ValueError(
                "MetaTrainer: a mixture of families needs objective='log_ratio' (the sum of "
                "losses would weigh the families by their loss scale)."
            )
        self.architecture = {
            "units": self.units,
            "num_layers": self.num_layers,
            "preprocess": self.preprocess,
            "exponent": self.exponent,
            "output_scale": self.output_scale,
            "inputs": self.inputs,
        }
        learned.check_architecture(**self.architecture)
        if self.init_from is None:
            initial = learned.initial_meta_parameters(
                self.units, self.num_layers, self.preprocess, self.seed, self.inputs
            )
        else:
            initial, architecture = learned.load_meta_parameters(self.init_from)
            if any(architecture[k] != v for k, v in self.architecture.items()):
                raise ValueError(
                    f"MetaTrainer: init_from {self.init_from!r} has the architecture "
                    f"{architecture}, not {self.architecture}."
                )
        self.phi = [
            keras.Variable(v, name=n.replace("/", "_"), trainable=True)
            for (n, _), v in zip(
                learned.meta_parameter_shapes(
                    self.units, self.num_layers, self.preprocess, self.inputs
                ),
                initial,
            )
        ]
        self.meta_optimizer = keras.optimizers.Adam(
            self.learning_rate, global_clipnorm=self.clipnorm
        )
        self.meta_optimizer.build(self.phi)
        self._rng = np.random.default_rng(self.seed)
        self._compiled = {}
        # Progress of `fit`, saved by `save_checkpoint`.
        self.epoch, self.best, self.waited, self.skipped, self.seconds = 0, np.inf, 0, 0, 0.0
        self.backends = {}  # backend -> epochs it ran
        self.history = {"meta_loss": [], "validation_final_loss": [], "validation_mean_loss": []}
        self.best_phi = self._phi_arrays()

    def _phi_arrays(self):
        return [np.asarray(ops.convert_to_numpy(v)) for v in self.phi]

    def _functions(self, problem):
        """The compiled `(train, eval)` unrolls of one family (cached)."""
        if problem.name not in self._compiled:

            def objective(phi, params, state, constants, batches, reference):
                return unroll(
                    phi,
                    params,
                    state,
                    constants,
                    batches,
                    reference,
                    problem,
                    self.unroll,
                    self.architecture,
                    self.objective,
                    LOG_RATIO_FLOOR if self.log_ratio_floor is None else self.log_ratio_floor,
                )

            self._compiled[problem.name] = (
                backend.compiled_value_and_grad(objective),
                backend.compiled(objective),
            )
        return self._compiled[problem.name]

    def _episode(self, problem, rng, num_problems, horizon):
        params, constants, batches = sample_episode(problem, rng, num_problems, horizon)
        size = sum(int(np.prod(p.shape)) for p in params)
        state = learned.initial_state((size,), self.units, self.num_layers, inputs=self.inputs)
        return params, constants, batches, state, ops.zeros((num_problems,))

    def _chunk(self, batches, k):
        start = k * self.unroll
        return {
            n: ops.convert_to_tensor(v[start : start + self.unroll + 1]) for n, v in batches.items()
        }

    def _training_horizon(self):
        if self.max_horizon is None:
            return self.horizon
        log_h = self._rng.uniform(np.log(self.horizon), np.log(self.max_horizon))
        return int(self.unroll * max(1, round(np.exp(log_h) / self.unroll)))

    def train_episode(self):
        """One episode of fresh problems: one update of `phi` per unroll.

        An unroll whose meta-loss or meta-gradient is not finite is not
        applied (counted in `self.skipped`) and ends the episode.

        Returns:
            The episode's mean loss per step (`"sum"`) or mean meta-loss
            (`"log_ratio"`).
        """
        problem = self.problem.draw(self._rng) if hasattr(self.problem, "draw") else self.problem
        horizon = self._training_horizon()
        train_fn, _ = self._functions(problem)
        params, constants, batches, state, reference = self._episode(
            problem, self._rng, self.num_problems, horizon
        )
        values = []
        for k in range(horizon // self.unroll):
            # (No draw without restarts: the stream of the first presets' runs.)
            if k and self.restart_probability and self._rng.uniform() < self.restart_probability:
                state = learned.initial_state(
                    ops.shape(state[0])[:1], self.units, self.num_layers, inputs=self.inputs
                )
                reference = ops.zeros_like(reference)
            (meta_loss, (params, state, _, reference)), grads = train_fn(
                [v.value for v in self.phi],
                params,
                state,
                constants,
                self._chunk(batches, k),
                reference,
            )
            meta_loss = float(ops.convert_to_numpy(meta_loss))
            finite = np.isfinite(meta_loss) and all(
                np.all(np.isfinite(ops.convert_to_numpy(g))) for g in grads
            )
            if not finite:
                self.skipped += 1
                break
            self.meta_optimizer.apply(grads, self.phi)
            values.append(meta_loss)
        if not values:
            return float("nan")
        if self.objective == "sum":
            return float(np.sum(values)) / (len(values) * self.unroll)
        return float(np.mean(values))

    def run(self, phi, seed, num_problems, horizon=None, problem=None):
        """Loss curves of the learned optimizer on `num_problems` problems.

        Args:
            phi: meta-parameters (arrays).
            seed: seed of the problems (e.g. `VALIDATION_SEED`, `TEST_SEED`).
            num_problems: number of problems.
            horizon: steps (default: the validation horizon); any multiple
                of `unroll`.
            problem: the family (default: the trainer's; required for a
                mixture).

        Returns:
            numpy `(horizon + 1, num_problems)` losses at `theta_0..theta_T`.
        """
        problem = problem or self.problem
        horizon = horizon or self.validation_horizon or self.horizon
        _, eval_fn = self._functions(problem)
        params, constants, batches, state, reference = self._episode(
            problem, np.random.default_rng(seed), num_problems, horizon
        )
        phi = [ops.convert_to_tensor(v) for v in phi]
        curves = []
        for k in range(horizon // self.unroll):
            _, (params, state, losses, reference) = eval_fn(
                phi, params, state, constants, self._chunk(batches, k), reference
            )
            losses = ops.convert_to_numpy(losses)
            curves.append(losses if k == 0 else losses[1:])
        return np.concatenate(curves)

    def run_all(self, phi, seed, num_problems, horizon=None):
        """`run` on every member of the problem (one family or a mixture).

        Returns:
            `{family name: curves}`.
        """
        return {
            m.name: self.run(phi, seed, num_problems, horizon, problem=m)
            for m in _members(self.problem)
        }

    def score(self, curves):
        """`(final, mean)` validation scores of `run_all`'s curves.

        For `"sum"`, the mean loss at the last step and over all steps; for
        `"log_ratio"`, the mean over families of `log(mean loss at the step
        / mean initial loss + log_ratio_floor)` (no floor if it is unset), at
        the last step and over all steps. Lower is better; a diverged family
        makes the score infinite.
        """
        if self.objective == "sum":
            (c,) = curves.values()
            return float(c[-1].mean()), float(c[1:].mean())
        final, mean = [], []
        floor = self.log_ratio_floor or 0.0
        for c in curves.values():
            initial = c[0].mean()
            final.append(np.log(c[-1].mean() / initial + floor))
            mean.append(np.log(c[1:].mean(axis=1) / initial + floor).mean())
        scores = float(np.mean(final)), float(np.mean(mean))
        return tuple(s if np.isfinite(s) else float("inf") for s in scores)

    def fit(
        self,
        epochs=50,
        episodes_per_epoch=20,
        patience=10,
        log_dir=None,
        verbose=1,
        checkpoint_dir=None,
    ):
        """Meta-trains with early stopping on the held-out problems.

        After each epoch of `episodes_per_epoch` episodes, `phi` is scored
        (`score`) on `validation_problems` fixed held-out problems per family;
        the best `phi` is kept (`self.best_phi`). Training continues from
        `self.epoch`, so a trainer restored with `restore_checkpoint` resumes
        where its run stopped.

        Args:
            epochs: total number of epochs (including those already run).
            episodes_per_epoch: episodes per epoch.
            patience: epochs without improvement before stopping.
            log_dir: if set, TensorBoard scalars (`meta_loss`,
                `validation_final_loss`, `validation_mean_loss`) go there.
            verbose: 1 for a progress bar per epoch, 0 for silence.
            checkpoint_dir: if set, the whole training state is saved there
                after every epoch (`save_checkpoint`).

        Returns:
            The history: a dict of per-epoch lists.
        """
        writer = None
        if log_dir:
            import tensorflow as tf

            writer = tf.summary.create_file_writer(str(log_dir))
        while self.epoch < epochs and self.waited < patience:
            start = time.time()
            if verbose:
                print(f"Epoch {self.epoch + 1}/{epochs}", file=sys.stderr)
                bar = keras.utils.Progbar(episodes_per_epoch, stateful_metrics=["meta_loss"])
            losses = []
            for episode in range(episodes_per_epoch):
                losses.append(self.train_episode())
                if verbose:
                    bar.update(episode + 1, [("meta_loss", float(np.nanmean(losses)))])
            phi = self._phi_arrays()
            final, mean = self.score(self.run_all(phi, VALIDATION_SEED, self.validation_problems))
            for key, value in zip(self.history, (float(np.nanmean(losses)), final, mean)):
                self.history[key].append(value)
            if verbose:
                print(f"  validation final {final:.4f}, mean {mean:.4f}", file=sys.stderr)
            if writer is not None:
                with writer.as_default(step=self.epoch):
                    for key, values in self.history.items():
                        tf.summary.scalar(key, values[-1])
                writer.flush()
            if np.isfinite(final) and final < self.best:
                self.best, self.waited, self.best_phi = final, 0, phi
            else:
                self.waited += 1
            self.epoch += 1
            self.seconds += time.time() - start
            backend_name = keras.backend.backend()
            self.backends[backend_name] = self.backends.get(backend_name, 0) + 1
            if checkpoint_dir is not None:
                self.save_checkpoint(checkpoint_dir)
        history = dict(self.history)
        history["best_epoch"] = int(np.nanargmin(history["validation_final_loss"])) + 1
        return history

    def settings(self):
        """The trainer's arguments, the problem by name (JSON-ready)."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        settings["problem"] = self.problem.name
        return settings

    def save_checkpoint(self, directory):
        """Saves everything `fit` needs to continue: `phi`, the best `phi`,
        the meta-optimizer's state, the random generator, the history and
        the early-stopping counters. Each file is written whole, then renamed
        over the previous one.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"phi_{i}": v for i, v in enumerate(self._phi_arrays())}
        arrays |= {f"best_phi_{i}": v for i, v in enumerate(self.best_phi)}
        arrays |= {
            f"meta_optimizer_{i}": ops.convert_to_numpy(v)
            for i, v in enumerate(self.meta_optimizer.variables)
        }
        state = {
            "settings": self.settings(),
            "epoch": self.epoch,
            "best": self.best,
            "waited": self.waited,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "backends": self.backends,
            "history": self.history,
            "rng": self._rng.bit_generator.state,
        }
        tmp = directory / f"{CHECKPOINT_ARRAYS}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, directory / CHECKPOINT_ARRAYS)
        tmp = directory / f"{CHECKPOINT_STATE}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, directory / CHECKPOINT_STATE)

    def restore_checkpoint(self, directory):
        """Restores a `save_checkpoint` of a trainer with the same settings.

        A setting the checkpoint does not record (it predates that field)
        counts as the field's default.

        Raises:
            FileNotFoundError: if `directory` holds no checkpoint.
            ValueError: if the checkpoint was made with other settings.
        """
        directory = Path(directory)
        if not (directory / CHECKPOINT_STATE).exists():
            raise FileNotFoundError(f"MetaTrainer: no checkpoint in {directory} to resume from.")
        state = json.loads((directory / CHECKPOINT_STATE).read_text())
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name != "problem"}
        recorded = {**defaults, **state["settings"]}
        if recorded != self.settings():
            changed = sorted(k for k in recorded if recorded[k] != self.settings().get(k))
            raise ValueError(
                f"MetaTrainer: the checkpoint in {directory} was made with other settings "
                f"({', '.join(changed)}); resume with the same ones."
            )
        with np.load(directory / CHECKPOINT_ARRAYS) as arrays:
            for i, v in enumerate(self.phi):
                v.assign(arrays[f"phi_{i}"])
            self.best_phi = [arrays[f"best_phi_{i}"] for i in range(len(self.phi))]
            for i, v in enumerate(self.meta_optimizer.variables):
                v.assign(arrays[f"meta_optimizer_{i}"])
        self.epoch, self.best = state["epoch"], state["best"]
        self.waited, self.skipped = state["waited"], state["skipped"]
        self.seconds, self.backends = state["seconds"], state["backends"]
        self.history = state["history"]
        self._rng.bit_generator.state = state["rng"]
