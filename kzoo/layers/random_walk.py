"""Random Walk Networks (Bertasius, Torresani, Yu & Shi, 2016).

The whole implementation of the paper's layers lives here (equations:
`docs/equations.md` §S2):

- pure `keras.ops` functions: `neighbour_offsets`, `pixel_affinities`,
  `transition_matrix`, `sparse_transition_matrix`, `random_walk_step`,
  `random_walk`, `affinity_targets`;
- `PixelAffinity`: the affinity branch (per-channel L1 distances to every
  neighbour within a radius, a learned 1x1xk map, exp);
- `RandomWalk`: applies the row-normalized transition matrix A to
  segmentation potentials, one step (`A f`) or the converged walk
  `(1 - alpha) (I - alpha A)^-1 f`;
- `AffinityLoss`: the Euclidean loss to ground-truth affinities from a label
  map.

A is an N x N matrix over the N = H * W pixels whose non-zeros are the
neighbours within `radius` (Euclidean, the pixel itself included). Because the
neighbourhood is a regular stencil, A is carried between layers as an
`(batch, H, W, P)` tensor: entry `[b, y, x, p]` is A's value in row
`(y, x)` and column `(y, x) + neighbour_offsets(radius)[p]` (zero where that
column falls outside the image). Two implementations apply it:

- `"stencil"` (every backend): `A f` straight from the stencil layout
  (`kzoo.backend.stencil_product`): shift-and-multiply over the P offsets,
  which XLA fuses, on TensorFlow and JAX; on PyTorch one CSR matrix per image
  whose columns index the zero-padded image, so the stencil is used as
  stored;
- `"sparse"` (TensorFlow, JAX): a real sparse matrix (`tf.SparseTensor`,
  `jax.experimental.sparse.BCOO`), block-diagonal over the batch, multiplied
  with `keras.ops.matmul`.

Both give the same numbers (tested), and gradients reach A only at its
non-zeros.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.layers import contracts

_MAX_RADIUS = 128


def neighbour_offsets(radius):
    """The (dy, dx) offsets of a pixel's neighbours within `radius`.

    Args:
        radius: non-negative int; neighbours satisfy `dy**2 + dx**2 <= radius**2`.

    Returns:
        An int numpy array `(P, 2)`, sorted by (dy, dx), including (0, 0).
    """
    if not isinstance(radius, (int, np.integer)) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"`radius` must be a non-negative int, got {radius!r}.")
    r = int(radius)
    return np.array(
        [
            (dy, dx)
            for dy in range(-r, r + 1)
            for dx in range(-r, r + 1)
            if dy * dy + dx * dx <= r * r
        ],
        dtype="int64",
    ).reshape(-1, 2)


def radius_for_neighbours(num_neighbours):
    """The radius whose neighbourhood has `num_neighbours` offsets, or None."""
    r = 0
    while r <= _MAX_RADIUS:
        count = len(neighbour_offsets(r))
        if count == num_neighbours:
            return r
        if count > num_neighbours:
            return None
        r += 1
    return None


def _spatial_size(x):
    shape = ops.shape(x)
    return shape[1], shape[2]


def _shifted(x_padded, dy, dx, radius, height, width):
    """`x[:, y + dy, x + dx, :]` for every (y, x), from x zero-padded by radius."""
    return x_padded[:, radius + dy : radius + dy + height, radius + dx : radius + dx + width, :]


def _pad(x, radius):
    return ops.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]])


def neighbour_mask(height, width, radius, dtype="float32"):
    """1 where neighbour p of pixel (y, x) lies inside the image, else 0.

    Returns:
        A tensor `(1, height, width, P)`.
    """
    offsets = neighbour_offsets(radius)
    dy = ops.convert_to_tensor(offsets[:, 0], "int32")
    dx = ops.convert_to_tensor(offsets[:, 1], "int32")
    ys = ops.expand_dims(ops.arange(height, dtype="int32"), 1) + dy[None, :]
    xs = ops.expand_dims(ops.arange(width, dtype="int32"), 1) + dx[None, :]
    rows = ops.logical_and(ys >= 0, ys < height)  # (H, P)
    cols = ops.logical_and(xs >= 0, xs < width)  # (W, P)
    mask = ops.logical_and(rows[:, None, :], cols[None, :, :])
    return ops.cast(mask[None], dtype)


def pixel_affinities(features, weights, radius):
    """Affinities `a_ij = exp(w . |F_i - F_j|)` to every neighbour within radius.

    Args:
        features: `(batch, H, W, k)` per-pixel features.
        weights: `(k,)` weights of the 1x1xk map applied to the per-channel L1
            distances.
        radius: neighbourhood radius.

    Returns:
        `(batch, H, W, P)` affinities in the stencil layout of this module;
        zero for neighbours outside the image.
    """
    features = ops.convert_to_tensor(features)
    height, width = _spatial_size(features)
    padded = _pad(features, radius)
    offsets = [tuple(o) for o in neighbour_offsets(radius)]
    # The distances are symmetric: the logit of pixel i to i - o is the logit
    # of pixel i - o to i, so only the offsets after (0, 0) (half of them) are
    # computed from the features; the others are shifted copies.
    half = {}
    for dy, dx in offsets[len(offsets) // 2 :]:
        distances = ops.abs(features - _shifted(padded, dy, dx, radius, height, width))
        half[(dy, dx)] = ops.matmul(distances, weights)[..., None]
    logits = []
    for dy, dx in offsets:
        if (dy, dx) in half:
            logits.append(half[(dy, dx)])
        else:
            source = _pad(half[(-dy, -dx)], radius)
            logits.append(_shifted(source, dy, dx, radius, height, width))
    affinities = ops.exp(ops.concatenate(logits, axis=-1))
    return affinities * neighbour_mask(height, width, radius, affinities.dtype)


@functools.cache
def _training_affinities():
    """`pixel_affinities` as the training step runs it.

    On TensorFlow, an XLA cluster, and a second one for the gradient that
    recomputes the forward pass (`kzoo.backend.fused`): Keras' CPU train
    step is a graph without XLA, where the shifted differences (41 at R = 5)
    and their gradient are hundreds of separate passes over memory (BENCHMARKS.md,
    "Training the RWN on TensorFlow"). Inference, and so every export, keeps
    the plain ops, which TF Serving runs without XLA. Elsewhere it is
    `pixel_affinities` itself.
    """
    return backend.fused(pixel_affinities, recompute_gradient=True)


def transition_matrix(affinities):
    """Row-normalizes stencil affinities into the transition matrix A.

    Args:
        affinities: `(batch, H, W, P)` non-negative affinities, zero outside
            the image.

    Returns:
        A in the same stencil layout; every row (pixel) sums to 1.
    """
    return affinities / ops.maximum(
        ops.sum(affinities, axis=-1, keepdims=True), keras.backend.epsilon()
    )


def _stencil_positions(height, width, radius):
    """Row, column and flat stencil index of every in-image (pixel, neighbour)."""
    offsets = neighbour_offsets(radius)
    ys, xs, ps = np.meshgrid(
        np.arange(height), np.arange(width), np.arange(len(offsets)), indexing="ij"
    )
    ny, nx = ys + offsets[ps, 0], xs + offsets[ps, 1]
    inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
    rows = (ys * width + xs)[inside]
    cols = (ny * width + nx)[inside]
    flat = ((ys * width + xs) * len(offsets) + ps)[inside]
    return rows, cols, flat


def sparse_transition_matrix(transition, radius):
    """A as a backend sparse matrix, block-diagonal over the batch.

    Args:
        transition: `(batch, H, W, P)` stencil transition matrix, with static
            H and W.
        radius: the neighbourhood radius of the stencil.

    Returns:
        A `(batch * H * W, batch * H * W)` `tf.SparseTensor` (TensorFlow) or
        `BCOO` matrix (JAX) with the stencil's in-image entries as values.
    """
    batch = ops.shape(transition)[0]
    height, width, num_neighbours = transition.shape[1:]
    if height is None or width is None:
        raise ValueError(
            "The sparse random walk needs static image height and width, got "
            f"shape {tuple(transition.shape)}; use implementation='stencil'."
        )
    rows, cols, flat = _stencil_positions(height, width, radius)
    size = height * width
    values = ops.take(ops.reshape(transition, (batch, size * num_neighbours)), flat, axis=1)
    start = ops.expand_dims(ops.arange(batch, dtype="int32") * size, 1)
    indices = ops.stack(
        [
            ops.reshape(start + rows[None].astype("int32"), (-1,)),
            ops.reshape(start + cols[None].astype("int32"), (-1,)),
        ],
        axis=-1,
    )
    return backend.sparse_matrix(indices, ops.reshape(values, (-1,)), batch * size, batch * size)


def _stencil_step(potentials, transition, radius):
    return backend.stencil_product(
        transition, _pad(potentials, radius), neighbour_offsets(radius), radius
    )


def _sparse_step_fn(potentials, transition, radius):
    """`f -> A f` through one sparse matrix built once."""
    matrix = sparse_transition_matrix(transition, radius)
    shape = ops.shape(potentials)
    flat_shape = (-1, shape[-1])

    def step(f):
        return ops.reshape(ops.matmul(matrix, ops.reshape(f, flat_shape)), shape)

    return step


def default_implementation():
    """The fastest implementation on the current backend.

    Measured on one CPU thread, 128x128, R = 5, 21 classes
    (`benchmarks/random_walk_runtime.py`): the stencil beats the sparse matrix
    on TensorFlow (2.2 vs 10.3 ms) and JAX (1.2 vs 39 ms); PyTorch has only the
    stencil (2.4 ms). So it is the stencil everywhere.
    """
    return "stencil"


def _step_fn(potentials, transition, radius, implementation):
    if implementation == "auto":
        implementation = default_implementation()
    if implementation == "sparse":
        if not backend.supports_sparse():
            raise ValueError(
                "implementation='sparse' needs sparse matrices, which Keras "
                f"does not offer on the {keras.backend.backend()!r} backend; "
                "use 'stencil' (the same numbers, dense neighbourhoods)."
            )
        return _sparse_step_fn(potentials, transition, radius)
    if implementation == "stencil":
        return lambda f: _stencil_step(f, transition, radius)
    raise ValueError(
        f"`implementation` must be 'auto', 'stencil' or 'sparse', got {implementation!r}."
    )


def random_walk_step(potentials, transition, implementation="auto"):
    """One random-walk step `A f`.

    Args:
        potentials: `(batch, H, W, K)` segmentation potentials f.
        transition: `(batch, H, W, P)` transition matrix A (stencil layout).
        implementation: `"stencil"`, `"sparse"` or `"auto"`.

    Returns:
        `(batch, H, W, K)`.
    """
    potentials, transition = ops.convert_to_tensor(potentials), ops.convert_to_tensor(transition)
    radius = _radius_of(transition)
    return _step_fn(potentials, transition, radius, implementation)(potentials)


def converged_walk_steps(alpha, tolerance):
    """Iterations after which the walk is within `tolerance` of its limit.

    Starting from `(1 - alpha) f`, t iterations of
    `y <- alpha A y + (1 - alpha) f` leave an error of at most
    `alpha**(t + 1) * max|f|` for a row-stochastic A.
    """
    if alpha == 0:
        return 0
    return max(0, math.ceil(math.log(tolerance) / math.log(alpha)) - 1)


def random_walk(
    potentials,
    transition,
    mode="converged",
    alpha=0.01,
    steps=None,
    tolerance=1e-5,
    implementation="auto",
):
    """The random walk of Random Walk Networks.

    Args:
        potentials: `(batch, H, W, K)` segmentation potentials f.
        transition: `(batch, H, W, P)` row-stochastic transition matrix A in
            the stencil layout (see `transition_matrix`).
        mode: `"step"`: `A^steps f` (the paper trains with one step);
            `"converged"`: `(1 - alpha) (I - alpha A)^-1 f`, by fixed-point
            iteration, never a dense inverse.
        alpha: in [0, 1), the weight of the walk in the converged mode.
        steps: number of steps; in `"step"` mode default 1, in `"converged"`
            mode it overrides `tolerance` (a truncated walk).
        tolerance: in `"converged"` mode, the bound on the error relative to
            `max|f|` that sets the number of iterations.
        implementation: `"stencil"`, `"sparse"` or `"auto"`.

    Returns:
        `(batch, H, W, K)` refined potentials.
    """
    _check_walk_args(mode, alpha, steps, tolerance)
    potentials, transition = ops.convert_to_tensor(potentials), ops.convert_to_tensor(transition)
    radius = _radius_of(transition)
    step = _step_fn(potentials, transition, radius, implementation)
    if mode == "step":
        return ops.fori_loop(0, steps or 1, lambda _, y: step(y), potentials)
    if steps is None:
        steps = converged_walk_steps(alpha, tolerance)
    source = (1.0 - alpha) * potentials
    return ops.fori_loop(0, steps, lambda _, y: alpha * step(y) + source, source)


def _check_walk_args(mode, alpha, steps, tolerance):
    if mode not in ("step", "converged"):
        raise ValueError(f"`mode` must be 'step' or 'converged', got {mode!r}.")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"`alpha` must be in [0, 1) for the walk to converge, got {alpha!r}.")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"`steps` must be a positive int or None, got {steps!r}.")
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"`tolerance` must be in (0, 1), got {tolerance!r}.")


def _radius_of(transition):
    num_neighbours = transition.shape[-1]
    radius = None if num_neighbours is None else radius_for_neighbours(num_neighbours)
    if radius is None:
        raise ValueError(
            f"The last axis of a transition matrix must hold the P neighbours "
            f"of a radius (P = 1, 5, 13, 29, 49, 81, ...), got {num_neighbours}."
        )
    return radius


def affinity_targets(labels, radius, ignore_class=None):
    """Ground-truth affinities from a label map.

    Args:
        labels: `(batch, H, W)` integer class labels.
        radius: neighbourhood radius.
        ignore_class: optional label whose pixels take no part in the loss.

    Returns:
        `(targets, mask)`, both `(batch, H, W, P)` float32: target 1 where the
        pixel and its neighbour have the same label, else 0; mask 1 where the
        pair is inside the image (and neither pixel is ignored).
    """
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    height, width = _spatial_size(labels[..., None])
    fill = -1 if ignore_class is None else ignore_class
    padded = _pad(labels[..., None] - fill, radius)[..., 0] + fill  # pads with `fill`
    same, valid = [], []
    for dy, dx in neighbour_offsets(radius):
        other = padded[:, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        same.append(ops.equal(labels, other))
        if ignore_class is not None:
            valid.append(
                ops.logical_and(
                    ops.not_equal(labels, ignore_class), ops.not_equal(other, ignore_class)
                )
            )
    targets = ops.cast(ops.stack(same, axis=-1), "float32")
    mask = neighbour_mask(height, width, radius)
    if ignore_class is not None:
        mask = mask * ops.cast(ops.stack(valid, axis=-1), "float32")
    return targets * mask, mask


@keras.saving.register_keras_serializable(package="kzoo")
class PixelAffinity(keras.layers.Layer):
    """Pixel affinities of Random Walk Networks: `a_ij = exp(w . |F_i - F_j|)`.

    For every pixel i and every neighbour j within `radius` (the pixel itself
    included), the per-channel L1 distances `|F_i - F_j|` (k numbers, not
    summed) are mapped by a learned 1x1xk convolution and exponentiated. The
    layer has exactly k weights. Feed the output to `RandomWalk`, which
    row-normalizes it into the transition matrix A, and to `AffinityLoss`.

    Args:
        radius: neighbourhood radius R (P neighbours, e.g. 81 for R = 5).
        kernel_initializer: initializer of the k weights; the default -0.1
            makes affinities start decreasing with distance.
        kernel_regularizer: optional regularizer of the weights.
        kernel_constraint: optional constraint on the weights (e.g.
            `keras.constraints.NonNeg` on negated features).

    Input: `(batch, H, W, k)` features (the paper: RGB and two early conv
    layers, k = 131). Output: `(batch, H, W, P)` affinities, zero where the
    neighbour is outside the image.

    Contract: channels fixed at build and re-checked at every call; NaN or
    inf features give NaN affinities around them (they propagate).

    Training on TensorFlow computes the affinities, and then their gradient,
    as XLA clusters (the same numbers to float rounding; the zoo RWN's train
    step 1.7x faster on CPU); inference and exports use plain TensorFlow ops.

    Example:

    >>> features = keras.random.uniform((2, 16, 16, 8))
    >>> tuple(PixelAffinity(radius=2)(features).shape)
    (2, 16, 16, 13)
    """

    def __init__(
        self,
        radius,
        kernel_initializer=None,
        kernel_regularizer=None,
        kernel_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_neighbours = len(neighbour_offsets(radius))
        self.radius = int(radius)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.Constant(-0.1)
        )
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: PixelAffinity expects features of shape "
                f"(batch, height, width, channels) with known channels, got {input_shape}."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1],),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.input_spec = keras.InputSpec(ndim=4, axes={-1: input_shape[-1]})

    def call(self, features, training=None):
        affinities = _training_affinities() if training else pixel_affinities
        return affinities(features, ops.cast(self.kernel, features.dtype), radius=self.radius)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.num_neighbours)

    def get_config(self):
        return {
            **super().get_config(),
            "radius": self.radius,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
        }


@keras.saving.register_keras_serializable(package="kzoo")
class RandomWalk(keras.layers.Layer):
    """The random-walk layer of Random Walk Networks.

    Takes segmentation potentials f and pixel affinities, row-normalizes the
    affinities into the transition matrix A and returns `A f` (mode `"step"`,
    the paper's training setting) or the converged walk
    `(1 - alpha) (I - alpha A)^-1 f` (mode `"converged"`, its test setting),
    computed by fixed-point iteration to `tolerance`. The radius is read from
    the affinities' last axis. Gradients flow to f and to the affinities.

    Args:
        mode: `"step"` or `"converged"`.
        alpha: in [0, 1); the paper uses 0.01.
        steps: `"step"` mode: number of steps (default 1); `"converged"` mode:
            a fixed number of iterations instead of `tolerance`.
        tolerance: error bound, relative to `max|f|`, of the converged walk.
        implementation: `"stencil"` (any backend), `"sparse"` (TensorFlow
            `tf.SparseTensor`, JAX `BCOO`; needs static H and W) or `"auto"`
            (the fastest here, see BENCHMARKS.md).
        check_values: raise a `ValueError` on invalid affinities in eager
            calls (`kzoo.layers.contracts`); their outputs are NaN either way.

    Contract: potentials `(batch, H, W, K)` and affinities `(batch, H, W, P)`
    with K and P fixed at build; affinities finite and non-negative
    (`PixelAffinity`'s are). Non-finite potentials propagate.

    Inputs: `[potentials, affinities]`, `(batch, H, W, K)` and
    `(batch, H, W, P)`. Output: `(batch, H, W, K)`.

    Example:

    >>> f = keras.random.uniform((2, 16, 16, 3))
    >>> affinities = PixelAffinity(radius=2)(keras.random.uniform((2, 16, 16, 8)))
    >>> tuple(RandomWalk(mode="converged", alpha=0.5)([f, affinities]).shape)
    (2, 16, 16, 3)
    """

    def __init__(
        self,
        mode="converged",
        alpha=0.01,
        steps=None,
        tolerance=1e-5,
        implementation="auto",
        check_values=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.check_values = bool(check_values)
        _check_walk_args(mode, alpha, steps, tolerance)
        if implementation not in ("auto", "stencil", "sparse"):
            raise ValueError(
                f"`implementation` must be 'auto', 'stencil' or 'sparse', got {implementation!r}."
            )
        self.mode = mode
        self.alpha = float(alpha)
        self.steps = steps
        self.tolerance = float(tolerance)
        self.implementation = implementation

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                f"{self.name}: RandomWalk expects two inputs [potentials, affinities], "
                f"got {input_shape}."
            )
        f_shape, a_shape = input_shape
        if len(f_shape) != 4 or len(a_shape) != 4:
            raise ValueError(
                f"{self.name}: RandomWalk expects potentials (batch, H, W, K) and "
                f"affinities (batch, H, W, P), got {f_shape} and {a_shape}."
            )
        self._check_same_size(f_shape, a_shape)
        if a_shape[-1] is None or radius_for_neighbours(a_shape[-1]) is None:
            raise ValueError(
                f"{self.name}: the affinities' last axis must be the number of "
                f"neighbours of a radius (1, 5, 13, 29, 49, 81, ...), got {a_shape}."
            )
        self.input_spec = [
            keras.InputSpec(ndim=4, axes={-1: f_shape[-1]}),
            keras.InputSpec(ndim=4, axes={-1: a_shape[-1]}),
        ]

    def _check_same_size(self, f_shape, a_shape):
        # At build and at every call: the build-time shapes may have been None.
        for axis in (1, 2):
            if None not in (f_shape[axis], a_shape[axis]) and f_shape[axis] != a_shape[axis]:
                raise ValueError(
                    f"{self.name}: potentials and affinities must have the same "
                    f"height and width (upsample the potentials to the affinity "
                    f"resolution first), got {tuple(f_shape)} and {tuple(a_shape)}."
                )

    def call(self, inputs):
        potentials, affinities = inputs
        contracts.check_nonempty(self, potentials, (1, 2), "at least one pixel")
        self._check_same_size(potentials.shape, affinities.shape)
        potentials = contracts.float_inputs(self, potentials)
        affinities = ops.cast(affinities, potentials.dtype)
        # A transition matrix needs finite, non-negative affinities; a negative
        # one would make rows that sum to 1 with negative "probabilities".
        valid = contracts.finite_examples(affinities) & ops.all(affinities >= 0, axis=(1, 2, 3))
        contracts.enforce(self, valid, "finite, non-negative affinities")
        affinities = ops.where(valid[:, None, None, None], affinities, ops.zeros_like(affinities))
        walked = random_walk(
            potentials,
            transition_matrix(affinities),
            mode=self.mode,
            alpha=self.alpha,
            steps=self.steps,
            tolerance=self.tolerance,
            implementation=self.implementation,
        )
        return contracts.poison(walked, valid)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {
            **super().get_config(),
            "mode": self.mode,
            "alpha": self.alpha,
            "steps": self.steps,
            "tolerance": self.tolerance,
            "implementation": self.implementation,
            "check_values": self.check_values,
        }


@keras.saving.register_keras_serializable(package="kzoo")
class AffinityLoss(keras.losses.Loss):
    """Euclidean loss between predicted and ground-truth pixel affinities.

    `y_true` is the `(batch, H, W)` label map; the target affinity of a pixel
    pair within `radius` is 1 if both have the same label, else 0. The loss is
    the mean of `(a_ij - target_ij)**2` over the in-image pairs (and pairs
    without `ignore_class`), per image.

    Args:
        radius: the radius of the predicted affinities.
        ignore_class: optional label excluded from the loss (e.g. 255 on VOC).
    """

    def __init__(self, radius, ignore_class=None, name="affinity_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.radius = int(radius)
        self.ignore_class = ignore_class

    def call(self, y_true, y_pred):
        if len(y_true.shape) == 4:
            y_true = y_true[..., 0]
        targets, mask = affinity_targets(y_true, self.radius, self.ignore_class)
        y_pred = ops.cast(y_pred, "float32")
        squared = ops.square(y_pred - targets) * mask
        return ops.sum(squared, axis=(1, 2, 3)) / ops.maximum(ops.sum(mask, axis=(1, 2, 3)), 1.0)

    def get_config(self):
        return {**super().get_config(), "radius": self.radius, "ignore_class": self.ignore_class}
