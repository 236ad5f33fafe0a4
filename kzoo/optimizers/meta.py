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

The few backend-specific operations (autodiff through the unroll, compilation)
are in `kzoo.backend`; the unroll itself is `keras.ops` and runs on
TensorFlow, JAX and PyTorch.
"""

import dataclasses
import sys

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


def unroll(phi, params, state, constants, batches, problem, steps, architecture):
    """`steps` learned-optimizer steps on a batch of problems.

    Args:
        phi: meta-parameters (list of tensors).
        params: the problems' parameters (list, leading problem axis `K`).
        state: the optimizer state for the flattened parameters.
        constants: the problems' constants.
        batches: per-step data with a leading axis of `steps + 1`.
        problem: the problem family (`kzoo.optimizers.problems`).
        steps: number of steps.
        architecture: `output_scale`, `preprocess`, `exponent` of the optimizer.

    Returns:
        `(meta_loss, (params, state, losses))`: the mean over problems of
        `sum_{t=1..steps} f(theta_t)`, the final parameters and state, and the
        losses `(steps + 1, K)` at `theta_0 .. theta_steps`.
    """
    losses = []
    for t in range(steps + 1):
        batch = {k: v[t] for k, v in batches.items()}
        value, grads = backend.value_and_stopped_gradient(
            lambda p: ops.sum(problem.loss(p, constants, batch)), params
        )
        losses.append(problem.loss(params, constants, batch))
        if t == steps:
            break
        update, state = learned.step(
            phi,
            _flatten(grads),
            state,
            output_scale=architecture["output_scale"],
            preprocess=architecture["preprocess"],
            exponent=architecture["exponent"],
        )
        params = [p + u for p, u in zip(params, _unflatten(update, params))]
    losses = ops.stack(losses)
    meta_loss = ops.mean(ops.sum(losses[1:], axis=0))
    return meta_loss, (params, state, losses)


@dataclasses.dataclass
class MetaTrainer:
    """Meta-trains `phi` on a problem family.

    Args:
        problem: a problem family instance (`kzoo.optimizers.problems`).
        units, num_layers, preprocess, exponent, output_scale: the optimizer's
            architecture (see `LSTMOptimizer`).
        horizon: optimization steps per episode (100).
        unroll: truncation length of BPTT (20).
        num_problems: problems optimized in parallel per episode.
        learning_rate: Adam learning rate of the meta-optimizer.
        validation_problems: size of the fixed held-out set.
        seed: seed of `phi`'s initialization and of the training problems.
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

    def __post_init__(self):
        if self.horizon % self.unroll:
            raise ValueError(
                f"MetaTrainer: horizon {self.horizon} is not a multiple of unroll {self.unroll}."
            )
        self.architecture = {
            "units": self.units,
            "num_layers": self.num_layers,
            "preprocess": self.preprocess,
            "exponent": self.exponent,
            "output_scale": self.output_scale,
        }
        self.phi = [
            keras.Variable(v, name=n.replace("/", "_"), trainable=True)
            for (n, _), v in zip(
                learned.meta_parameter_shapes(self.units, self.num_layers, self.preprocess),
                learned.initial_meta_parameters(
                    self.units, self.num_layers, self.preprocess, self.seed
                ),
            )
        ]
        self.meta_optimizer = keras.optimizers.Adam(self.learning_rate)
        self._rng = np.random.default_rng(self.seed)

        def objective(phi, params, state, constants, batches):
            return unroll(
                phi, params, state, constants, batches, self.problem, self.unroll, self.architecture
            )

        self._train_unroll = backend.compiled_value_and_grad(objective)
        self._eval_unroll = backend.compiled(objective)

    def _episode(self, rng, num_problems, horizon=None):
        params, constants, batches = sample_episode(
            self.problem, rng, num_problems, horizon or self.horizon
        )
        size = sum(int(np.prod(p.shape)) for p in params)
        state = learned.initial_state((size,), self.units, self.num_layers)
        return params, constants, batches, state

    def _chunk(self, batches, k):
        start = k * self.unroll
        return {
            n: ops.convert_to_tensor(v[start : start + self.unroll + 1]) for n, v in batches.items()
        }

    def train_episode(self):
        """One episode of fresh problems: `horizon / unroll` updates of `phi`.

        Returns:
            The episode's mean loss per step.
        """
        params, constants, batches, state = self._episode(self._rng, self.num_problems)
        total = 0.0
        for k in range(self.horizon // self.unroll):
            (meta_loss, (params, state, _)), grads = self._train_unroll(
                [v.value for v in self.phi], params, state, constants, self._chunk(batches, k)
            )
            self.meta_optimizer.apply(grads, self.phi)
            total += float(ops.convert_to_numpy(meta_loss))
        return total / self.horizon

    def run(self, phi, seed, num_problems, horizon=None):
        """Loss curves of the learned optimizer on `num_problems` problems.

        Args:
            phi: meta-parameters (arrays).
            seed: seed of the problems (e.g. `VALIDATION_SEED`, `TEST_SEED`).
            num_problems: number of problems.
            horizon: steps (default: the training horizon); any multiple of
                `unroll`.

        Returns:
            numpy `(horizon + 1, num_problems)` losses at `theta_0..theta_T`.
        """
        horizon = horizon or self.horizon
        params, constants, batches, state = self._episode(
            np.random.default_rng(seed), num_problems, horizon
        )
        phi = [ops.convert_to_tensor(v) for v in phi]
        curves = []
        for k in range(horizon // self.unroll):
            _, (params, state, losses) = self._eval_unroll(
                phi, params, state, constants, self._chunk(batches, k)
            )
            losses = ops.convert_to_numpy(losses)
            curves.append(losses if k == 0 else losses[1:])
        return np.concatenate(curves)

    def fit(self, epochs=50, episodes_per_epoch=20, patience=10, log_dir=None, verbose=1):
        """Meta-trains with early stopping on the held-out problems.

        After each epoch of `episodes_per_epoch` episodes, `phi` is scored by
        the mean final loss (step `horizon`) on `validation_problems` fixed
        held-out problems; the best `phi` is kept (`self.best_phi`).

        Args:
            epochs: maximum number of epochs.
            episodes_per_epoch: episodes per epoch.
            patience: epochs without improvement before stopping.
            log_dir: if set, TensorBoard scalars (`meta_loss`,
                `validation_final_loss`, `validation_mean_loss`) go there.
            verbose: 1 for a progress bar per epoch, 0 for silence.

        Returns:
            The history: a dict of per-epoch lists.
        """
        writer = None
        if log_dir:
            import tensorflow as tf

            writer = tf.summary.create_file_writer(str(log_dir))
        history = {"meta_loss": [], "validation_final_loss": [], "validation_mean_loss": []}
        best, waited = np.inf, 0
        self.best_phi = [np.asarray(ops.convert_to_numpy(v)) for v in self.phi]
        for epoch in range(epochs):
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}", file=sys.stderr)
                bar = keras.utils.Progbar(episodes_per_epoch, stateful_metrics=["meta_loss"])
            losses = []
            for episode in range(episodes_per_epoch):
                losses.append(self.train_episode())
                if verbose:
                    bar.update(episode + 1, [("meta_loss", float(np.mean(losses)))])
            phi = [np.asarray(ops.convert_to_numpy(v)) for v in self.phi]
            curves = self.run(phi, VALIDATION_SEED, self.validation_problems)
            final, mean = float(curves[-1].mean()), float(curves[1:].mean())
            for key, value in zip(history, (float(np.mean(losses)), final, mean)):
                history[key].append(value)
            if verbose:
                print(f"  validation final loss {final:.4f}, mean loss {mean:.4f}", file=sys.stderr)
            if writer is not None:
                with writer.as_default(step=epoch):
                    for key, values in history.items():
                        tf.summary.scalar(key, values[-1])
                writer.flush()
            if np.isfinite(final) and final < best:
                best, waited, self.best_phi = final, 0, phi
            else:
                waited += 1
                if waited >= patience:
                    break
        history["best_epoch"] = int(np.nanargmin(history["validation_final_loss"])) + 1
        return history
