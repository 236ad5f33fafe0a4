"""The few backend-specific pieces of kzoo, in one place.

Everything else in kzoo is written with `keras.ops`. What `keras.ops` cannot
express is here:

- sparse matrices: a `tf.SparseTensor` on TensorFlow, a
  `jax.experimental.sparse.BCOO` on JAX (both multiplied through
  `keras.ops.matmul`, which accepts them); PyTorch has no sparse support in
  Keras, so callers take a dense path there;
- gradients of a model's compiled loss outside `fit` (`loss_gradients`),
  with each backend's autodiff;
- one fused kernel for an elementwise-heavy function inside a train step
  (`fused`: XLA on TensorFlow, whose CPU train step is an unfused graph);
- the autodiff and compilation of meta-training (`value_and_stopped_gradient`,
  `compiled_value_and_grad`, `compiled`): gradients through an unrolled
  optimization, with the optimizee's gradients held constant, and
  `optimizer_stepper`, a compiled step of any Keras optimizer on functional
  parameters;
- data-parallel training on each backend's own engine (`data_parallel`,
  `use_virtual_cpu_devices`): `keras.distribution.DataParallel` on JAX,
  `tf.distribute.MirroredStrategy` (or `MultiWorkerMirroredStrategy` when
  `TF_CONFIG` is set) on TensorFlow; Keras has no engine for PyTorch;
- custom gradients with one calling convention (`custom_gradient`), and
  whether a tensor holds values that can be checked now (`is_concrete`);
- whether recurrent layers should compute their state-free inputs for the
  whole sequence before the loop (`precomputes_rnn_inputs`), and whether
  normalizations use a fused kernel (`fused_normalization`);
- whether an LSTM step computes its gates as separate, contiguous tensors
  (`contiguous_gates`);
- the random walk's stencil product (`stencil_product`): sparse CSR
  matrices on PyTorch, grouped sums where XLA fuses them;
- whether an optimizer must update variable by variable
  (`updates_per_variable`: under a `tf.distribute` strategy).
"""

import contextlib
import functools
import os
import warnings

import keras
import numpy as np
from keras import ops

from kzoo import compat


def supports_sparse():
    """Whether the current backend has sparse matrices usable in `keras.ops`."""
    return keras.backend.backend() in ("tensorflow", "jax")


def sparse_matrix(indices, values, num_rows, num_cols):
    """A 2-D sparse matrix of the current backend.

    Args:
        indices: int tensor `(nnz, 2)` of (row, column) positions, in row-major
            order.
        values: float tensor `(nnz,)`; gradients flow to it.
        num_rows: number of rows (a Python int or a scalar tensor).
        num_cols: number of columns.

    Returns:
        A `tf.SparseTensor` (TensorFlow) or a `BCOO` matrix (JAX), usable as the
        first argument of `keras.ops.matmul`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        shape = tf.stack([tf.cast(num_rows, "int64"), tf.cast(num_cols, "int64")])
        return tf.SparseTensor(tf.cast(indices, "int64"), values, shape)
    if backend == "jax":
        from jax.experimental import sparse

        return sparse.BCOO(
            (values, indices.astype("int32")),
            shape=(int(num_rows), int(num_cols)),
            indices_sorted=True,
            unique_indices=True,
        )
    raise ValueError(
        f"Sparse matrices are not available on the {backend!r} backend; "
        "use a dense implementation there."
    )


def loss_gradients(model, x, y, sample_weight=None):
    """Gradients of a compiled model's loss on one batch, without updating it.

    The forward pass runs in training mode inside a `keras.StatelessScope`, so
    no variable (batch-norm statistics, metrics, running means) changes.

    Args:
        model: a compiled Keras model.
        x, y: one batch of inputs and targets.
        sample_weight: optional sample weights.

    Returns:
        `(loss, gradients)`: a float and a list of numpy arrays aligned with
        `model.trainable_variables`.
    """
    import numpy as np

    trainable = model.trainable_variables
    trainable_ids = {id(v) for v in trainable}
    others = [v for v in model.variables if id(v) not in trainable_ids]

    def loss_fn(values):
        mapping = list(zip(trainable, values)) + [(v, v.value) for v in others]
        with keras.StatelessScope(state_mapping=mapping):
            y_pred = model(x, training=True)
            return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)

    backend = keras.backend.backend()
    values = [v.value for v in trainable]
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = loss_fn(values)
        grads = tape.gradient(loss, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    elif backend == "jax":
        import jax

        loss, grads = jax.value_and_grad(loss_fn)(values)
    elif backend == "torch":
        import torch

        values = [v.detach().clone().requires_grad_(True) for v in values]
        loss = loss_fn(values)
        grads = torch.autograd.grad(loss, values, allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g for v, g in zip(values, grads)]
    else:
        raise ValueError(f"loss_gradients: unsupported backend {backend!r}.")
    return float(keras.ops.convert_to_numpy(loss)), [
        np.asarray(keras.ops.convert_to_numpy(g)) for g in grads
    ]


def value_and_stopped_gradient(fn, params):
    """`fn(params)` and the gradient of its sum, cut from outer autodiff.

    The value (a tensor of any shape, e.g. one loss per problem) stays
    differentiable by an enclosing differentiation (through `params`); the
    gradient of its sum is a constant to it (no second derivatives), as in
    the learned optimizer's meta-training. One evaluation of `fn` gives both.

    Args:
        fn: maps a list of tensors to a tensor.
        params: the list of tensors.

    Returns:
        `(value, gradients)`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(params)
            value = fn(params)
            total = tf.reduce_sum(value)
        grads = tape.gradient(total, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return value, [tf.stop_gradient(g) for g in grads]
    if backend == "jax":
        import jax

        def summed(p):
            value = fn(p)
            return jax.numpy.sum(value), value

        (_, value), grads = jax.value_and_grad(summed, has_aux=True)(params)
        return value, [jax.lax.stop_gradient(g) for g in grads]
    if backend == "torch":
        import torch

        params = [p if p.requires_grad else p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            value = fn(params)
            grads = torch.autograd.grad(value.sum(), params, retain_graph=True, allow_unused=True)
        return value, [
            torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)
        ]
    raise ValueError(f"value_and_stopped_gradient: unsupported backend {backend!r}.")


def compiled_value_and_grad(fn):
    """Compiled `(params, *args) -> ((value, aux), d value / d params)`.

    Args:
        fn: `fn(params, *args) -> (value, aux)` with `params` a list of
            tensors, `value` a scalar and `aux` any structure of tensors.

    Returns:
        The function, `tf.function`-compiled on TensorFlow and `jax.jit`-ed on
        JAX (PyTorch runs it eagerly).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def value_and_grad(params, *args):
            with tf.GradientTape() as tape:
                tape.watch(params)
                value, aux = fn(params, *args)
            grads = tape.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return (value, aux), grads

        return tf.function(value_and_grad, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(jax.value_and_grad(fn, has_aux=True))
    if backend == "torch":
        import torch

        def value_and_grad(params, *args):
            params = [keras.ops.convert_to_tensor(p).detach().requires_grad_(True) for p in params]
            with torch.enable_grad():
                value, aux = fn(params, *args)
                grads = torch.autograd.grad(value, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
            return (value.detach(), keras.tree.map_structure(detach, aux)), grads

        return value_and_grad
    raise ValueError(f"compiled_value_and_grad: unsupported backend {backend!r}.")


def compiled(fn):
    """`fn` compiled for the backend (`tf.function`, `jax.jit`; eager on torch)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


def fused(fn, recompute_gradient=False):
    """`fn` compiled as one fused kernel where the train step would not fuse it.

    On CPU, Keras runs TensorFlow's train step as a graph without XLA, where
    each op of an elementwise-heavy function is its own pass over memory;
    there `fn` becomes one XLA cluster (`tf.function(jit_compile=True)`),
    inside `fit` or eagerly, compiled once per input signature. JAX compiles
    whole steps with XLA already and PyTorch runs eagerly: `fn` itself.

    Args:
        fn: a pure function of tensors (Keras variables are read first) and
            Python constants (keyword arguments), written with `keras.ops`.
        recompute_gradient: on TensorFlow, the gradient becomes one XLA
            cluster too, which recomputes `fn`'s forward pass instead of
            reading the intermediates that TensorFlow's gradient of the
            forward cluster would keep. For a cheap but memory-heavy `fn`
            (`PixelAffinity`'s 41 shifted distances: forward and backward
            19.7 -> 12.8 ms at batch 1, 168 -> 109 ms at batch 8).

    Returns:
        A function with `fn`'s signature and results.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    compiled = tf.function(fn, jit_compile=True, reduce_retracing=True)
    read = lambda x: tf.convert_to_tensor(x) if isinstance(x, keras.Variable) else x  # noqa: E731
    if not recompute_gradient:
        return lambda *args, **kwargs: compiled(*tf.nest.map_structure(read, args), **kwargs)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def vjp(tensors, upstream, **constants):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            output = fn(*tensors, **constants)
        return tape.gradient(output, tensors, output_gradients=upstream)

    def call(*args, **kwargs):
        args = tf.nest.map_structure(read, args)

        @tf.custom_gradient
        def run(*tensors):
            return compiled(*tensors, **kwargs), lambda upstream: vjp(tensors, upstream, **kwargs)

        return run(*args)

    return call


def optimizer_stepper(optimizer, params, loss_fn):
    """A compiled step `step(batch) -> losses` of a Keras optimizer.

    Minimizes `sum(loss_fn(params, batch))` from the initial `params`; the
    parameters and the optimizer's state are kept between calls. JAX uses
    `stateless_apply` inside `jax.jit`; TensorFlow (whose optimizers do not
    support `stateless_apply`) updates `keras.Variable`s in a `tf.function`;
    PyTorch updates them eagerly.

    Args:
        optimizer: an unbuilt `keras.optimizers.Optimizer`.
        params: the initial parameters (list of tensors).
        loss_fn: `loss_fn(params, batch)` -> a vector of losses.

    Returns:
        `step(batch)`, returning the losses at the parameters before the step.
    """
    variables = [keras.Variable(p, trainable=True) for p in params]
    optimizer.build(variables)

    if keras.backend.backend() == "jax":
        import jax

        def stateless(opt_values, values, batch):
            losses, grads = value_and_stopped_gradient(lambda p: loss_fn(p, batch), values)
            values, opt_values = optimizer.stateless_apply(opt_values, grads, values)
            return losses, values, opt_values

        jitted = jax.jit(stateless)
        state = {"opt": [v.value for v in optimizer.variables], "params": list(params)}

        def step(batch):
            losses, state["params"], state["opt"] = jitted(state["opt"], state["params"], batch)
            return losses

        return step

    def stateful(batch):
        values = [v.value for v in variables]
        losses, grads = value_and_stopped_gradient(lambda p: loss_fn(p, batch), values)
        optimizer.apply(grads, variables)
        return losses

    return compiled(stateful)


def use_virtual_cpu_devices(count):
    """Splits this host's CPU into `count` devices, to test data parallelism.

    Must run before the backend first uses a device: on JAX it sets
    `XLA_FLAGS=--xla_force_host_platform_device_count` (read when JAX
    initializes its devices), on TensorFlow it configures logical CPU devices.

    Raises:
        ValueError: on PyTorch, or when TensorFlow's devices are already set up.
    """
    backend = keras.backend.backend()
    if backend == "jax":  # read when JAX first initializes its devices
        flag = f"--xla_force_host_platform_device_count={int(count)}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        return
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * int(count)
            )
        except RuntimeError as e:
            raise ValueError(
                f"use_virtual_cpu_devices: TensorFlow already initialized its "
                f"devices ({e}); call it first."
            ) from e
        return
    raise ValueError(f"use_virtual_cpu_devices: no data-parallel engine on {backend!r}.")


@contextlib.contextmanager
def data_parallel(devices=None):
    """Runs the enclosed model building, `compile` and `fit` data-parallel.

    Every replica holds all weights; each global batch is split across the
    replicas and the gradients are averaged, so a run on N devices follows a
    single-device run on the same global batch. Layer state that changes
    during `fit` (batch-norm statistics, EM running means, optimizer state
    such as `LSTMOptimizer`'s) is updated identically on every replica.

    - JAX: `keras.distribution.DataParallel` over `devices` (default: all).
      The step is one SPMD program, so batch statistics are global.
    - TensorFlow: `tf.distribute.MirroredStrategy(devices)` on one host, or
      `MultiWorkerMirroredStrategy` when `TF_CONFIG` describes a cluster.
    - PyTorch: Keras has no distribution engine; raises `ValueError`.

    Args:
        devices: device names (JAX: e.g. `"cpu:0"`, `"gpu:1"`; TensorFlow:
            e.g. `"/gpu:0"`), default all devices of the host's accelerator
            type (CPU if there is none).

    Yields:
        The engine (`keras.distribution.DataParallel` or the `tf.distribute`
        strategy), whose number of replicas `num_replicas(engine)` gives.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        engine = keras.distribution.DataParallel(
            devices=devices or keras.distribution.list_devices()
        )
        with engine.scope():
            yield engine
    elif backend == "tensorflow":
        import tensorflow as tf

        if os.environ.get("TF_CONFIG"):
            engine = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            engine = tf.distribute.MirroredStrategy(devices)
        with engine.scope():
            yield engine
    else:
        raise ValueError(
            f"Data-parallel training is not available on the {backend!r} backend: Keras "
            "has no distribution engine for it. Use JAX (keras.distribution) or "
            "TensorFlow (tf.distribute)."
        )


@contextlib.contextmanager
def global_batch_statistics(model):
    """Batch norm over the global batch while training data-parallel.

    JAX's SPMD step already normalizes over the global batch. Under
    `tf.distribute`, Keras' `BatchNormalization` uses each replica's own
    statistics unless `synchronized`; inside this context every batch-norm
    layer of `model` is synchronized (an all-reduce of the moments per
    layer), and its config is restored on exit, so saved models stay loadable
    on every backend. Elsewhere it does nothing.

    Example:

    >>> with data_parallel():  # doctest: +SKIP
    ...     model = build()
    ...     with global_batch_statistics(model):
    ...         model.fit(x, y)
    """
    layers = []
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy():
            layers = [
                layer
                for layer in compat.flatten_layers(model)
                if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
            ]
    for layer in layers:
        layer.synchronized = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.synchronized = False


def cross_replica_mean(value):
    """The mean of `value` over the replicas of a `tf.distribute` step.

    For layer state computed from the batch (e.g. EM running means): each
    replica sees its share of the global batch, so the per-replica values are
    averaged to the global one. Elsewhere (one device, or JAX, whose SPMD step
    already sees the global batch) it returns `value`.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if (
            tf.distribute.has_strategy()
            and context is not None
            and context.num_replicas_in_sync > 1
        ):
            return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
    return value


def num_replicas(engine):
    """Number of replicas of a `data_parallel` engine."""
    if isinstance(engine, keras.distribution.DataParallel):
        return int(engine.device_mesh.devices.size)
    return int(engine.num_replicas_in_sync)


def custom_gradient(forward):
    """`keras.ops.custom_gradient` with one convention on every backend.

    `forward(*tensors)` returns `(output, grad)` and `grad(upstream)` returns
    the gradients of the tensors. TensorFlow and JAX call the gradient
    function with the upstream gradient; Keras' PyTorch backend calls it with
    the saved inputs and the upstream gradient as the keyword `upstream`.
    """

    def adapted(*tensors):
        output, grad = forward(*tensors)

        def grad_fn(*args, upstream=None):
            return grad(args[0] if upstream is None else upstream)

        return output, grad_fn

    return keras.ops.custom_gradient(adapted)


def is_concrete(x):
    """Whether `x` holds values now (not a symbolic or traced tensor)."""
    if isinstance(x, keras.KerasTensor):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.is_symbolic_tensor(x) and tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "torch":
        import torch

        return not (isinstance(x, torch.Tensor) and x.device.type == "meta")
    return True


def precomputes_rnn_inputs():
    """Whether kzoo's recurrent layers precompute their inputs by default.

    Computing the input projection (and its normalization) of every time step
    before the loop removes ops from each step. That wins on PyTorch, whose
    loop dispatches every op eagerly; on TensorFlow and JAX (compiled loops)
    it measured slower on CPU, because the per-step working set no longer
    stays in cache and the backward pass stacks a `(time, batch, 4 * units)`
    gradient (BENCHMARKS.md, "Train-step time").
    """
    return keras.backend.backend() == "torch"


def fused_normalization():
    """Whether normalizations should use the backend's fused kernel.

    PyTorch has fused layer and RMS norms (`F.layer_norm`, `F.rms_norm`,
    what `keras.ops` calls there); each op of its eager loop is a dispatch,
    so one kernel wins. XLA (TensorFlow, JAX) compiles the composite and
    autodiff's gradient of it, which a hand-written gradient beats
    (`zero_mean_layer_norm`; BENCHMARKS.md, "Train-step time").
    """
    return keras.backend.backend() == "torch"


def stencil_product(transition, padded, offsets, radius):
    """`A f` for a stencil matrix A, the random walk's step.

    `out[b, y, x] = sum_p transition[b, y, x, p] * padded[b, y + radius + dy_p,
    x + radius + dx_p]`, with `(dy_p, dx_p) = offsets[p]`.

    - Eager PyTorch (float32/float64 on CPU or CUDA) multiplies one sparse
      CSR matrix per image: row `(y, x)` holds the P weights, in the columns
      of the neighbours' positions in the padded image (always inside it, so
      the weights are used as they are, without a gather). Its gradient is
      a sampled product for the weights (`torch.sparse.sampled_addmm`) and
      an in-place scatter for the image (`_csr_stencil_product`).
    - Elsewhere on PyTorch (half precision, `torch.compile`, symbolic
      tensors, an empty batch) the products go into one buffer in place (`addcmul_` on
      contiguous weight planes): eager PyTorch would otherwise allocate a
      tensor for every product and partial sum.
    - On TensorFlow and JAX the products are summed within each stencil row
      (dy), then the rows: XLA fuses the whole sum into one loop, and that is
      2 * radius + 1 independent chains of adds instead of one chain of P
      dependent ones. On JAX the gradient is written out: for the weights,
      one contraction over the classes per stencil row
      (`_stencil_weight_gradient`), where autodiff makes P separate
      reductions (one step with gradients: 144 ms with autodiff's, 66-72
      ms written out); on TensorFlow's XLA the written-out gradient
      measured slower than autodiff's (64 vs 45 ms), so it is not used.

    Measured on one CPU thread, 128x128, 81 neighbours, 21 classes
    (`benchmarks/random_walk_runtime.py`, BENCHMARKS.md "Runtime on one CPU
    thread").

    Args:
        transition: `(batch, H, W, P)` weights.
        padded: `(batch, H + 2 * radius, W + 2 * radius, K)` image, zero
            outside the original one.
        offsets: int numpy array `(P, 2)` of (dy, dx), each within radius.
        radius: the padding.

    Returns:
        `(batch, H, W, K)`.
    """
    if keras.backend.backend() == "torch":
        if _csr_stencil_applies(transition, padded):
            return _csr_stencil_product().apply(transition, padded, offsets, radius)
        return _add_products_in_place(transition, padded, offsets, radius)
    if keras.backend.backend() != "jax":
        return _summed_by_rows(transition, padded, offsets, radius)

    def forward(transition, padded):
        def grad(upstream):
            return (
                _stencil_weight_gradient(upstream, padded, offsets, radius),
                _stencil_image_gradient(upstream, transition, offsets, radius),
            )

        return _summed_by_rows(transition, padded, offsets, radius), grad

    return custom_gradient(forward)(transition, padded)


def _summed_by_rows(transition, padded, offsets, radius):
    """The stencil product, summed within each stencil row, then the rows."""
    height, width = ops.shape(transition)[1], ops.shape(transition)[2]
    total = None
    for dy in np.unique(offsets[:, 0]):
        partial = None
        for p in np.flatnonzero(offsets[:, 0] == dy):
            y, x = radius + int(dy), radius + int(offsets[p, 1])
            product = transition[..., p : p + 1] * padded[:, y : y + height, x : x + width, :]
            partial = product if partial is None else partial + product
        total = partial if total is None else total + partial
    return total


def _stencil_weight_gradient(upstream, padded, offsets, radius):
    """`d[b, y, x, p] = sum_k upstream[b, y, x, k] * padded[b, y + R + dy_p,
    x + R + dx_p, k]`: per stencil row, the row's shifted images stacked and
    contracted with the upstream gradient over the classes in one einsum.

    Offsets sorted by row (as `neighbour_offsets` gives them) need no
    reordering at the end.
    """
    height, width = ops.shape(upstream)[1], ops.shape(upstream)[2]
    rows, order = [], []
    for dy in np.unique(offsets[:, 0]):
        members = np.flatnonzero(offsets[:, 0] == dy)
        y = radius + int(dy)
        window = ops.stack(
            [
                padded[:, y : y + height, radius + int(dx) : radius + int(dx) + width, :]
                for dx in offsets[members, 1]
            ],
            axis=-2,
        )
        rows.append(ops.einsum("bhwpk,bhwk->bhwp", window, upstream))
        order.extend(members)
    gradient = ops.concatenate(rows, axis=-1)
    if order != sorted(order):
        gradient = ops.take(gradient, np.argsort(order), axis=-1)
    return gradient


def _stencil_image_gradient(upstream, transition, offsets, radius):
    """`sum_p` of `transition[..., p] * upstream`, each placed at its offset in
    the padded image (the transpose of the stencil product in `padded`)."""
    total = None
    for p, (dy, dx) in enumerate(offsets):
        y, x = radius + int(dy), radius + int(dx)
        placed = ops.pad(
            transition[..., p : p + 1] * upstream,
            [[0, 0], [y, 2 * radius - y], [x, 2 * radius - x], [0, 0]],
        )
        total = placed if total is None else total + placed
    return total


def _csr_stencil_applies(transition, padded):
    import torch

    return (
        transition.dtype in (torch.float32, torch.float64)
        and padded.dtype == transition.dtype
        and transition.device.type in ("cpu", "cuda")
        and transition.shape[0] > 0
        and not torch.compiler.is_compiling()
    )


def _add_products_in_place(transition, padded, offsets, radius, total=None, scatter=False):
    """`total += sum_p plane_p * shift_p(padded)`, or with `scatter`,
    `shift_p(total) += plane_p * padded` (the image gradient)."""
    import torch

    height, width = transition.shape[1:3]
    planes = torch.movedim(transition, -1, 0).contiguous().unsqueeze(-1)
    if total is None:
        total = padded.new_zeros(padded.shape[:1] + (height, width) + padded.shape[3:])
    for plane, (dy, dx) in zip(planes, offsets.tolist()):
        y, x = radius + dy, radius + dx
        if scatter:
            total[:, y : y + height, x : x + width].addcmul_(plane, padded)
        else:
            total.addcmul_(plane, padded[:, y : y + height, x : x + width])
    return total


@functools.lru_cache(maxsize=16)
def _csr_stencil_pattern(height, width, offsets, radius, device):
    """Row pointers and columns of a stencil's CSR matrix over the padded image."""
    import torch

    dy, dx = np.asarray(offsets).T
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    columns = (ys[..., None] + dy + radius) * (width + 2 * radius) + xs[..., None] + dx + radius
    rows = np.arange(0, height * width * len(dy) + 1, len(dy))
    # int32 indices where they fit: MKL's product is ~1.5x faster than with int64.
    dtype = "int32" if rows[-1] < 2**31 and columns.max() < 2**31 else "int64"
    return tuple(
        torch.as_tensor(a.reshape(-1).astype(dtype), device=device) for a in (rows, columns)
    )


def _csr_matrices(transition, offsets, radius):
    import torch

    batch, height, width, _ = transition.shape
    rows, columns = _csr_stencil_pattern(
        height, width, tuple(map(tuple, offsets.tolist())), radius, str(transition.device)
    )
    shape = (height * width, (height + 2 * radius) * (width + 2 * radius))
    for b in range(batch):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            matrix = torch.sparse_csr_tensor(
                rows, columns, transition[b].reshape(-1), shape, check_invariants=False
            )
        yield matrix


@functools.cache
def _csr_stencil_product():
    import torch
    from torch.autograd.function import once_differentiable

    class CsrStencilProduct(torch.autograd.Function):
        """`stencil_product` on PyTorch through one CSR matrix per image."""

        @staticmethod
        def forward(ctx, transition, padded, offsets, radius):
            ctx.save_for_backward(transition, padded)
            ctx.offsets, ctx.radius = offsets, radius
            flat = padded.reshape(padded.shape[0], -1, padded.shape[-1])
            out = [m @ f for m, f in zip(_csr_matrices(transition, offsets, radius), flat)]
            return torch.stack(out).reshape(transition.shape[:3] + padded.shape[-1:])

        @staticmethod
        @once_differentiable
        def backward(ctx, upstream):
            transition, padded = ctx.saved_tensors
            grad_transition = grad_padded = None
            if ctx.needs_input_grad[0]:
                flat = padded.reshape(padded.shape[0], -1, padded.shape[-1])
                upstream_rows = upstream.reshape(upstream.shape[0], -1, upstream.shape[-1])
                # The sampled product `u f^T` at A's entries (a zero pattern, so
                # that non-finite weights do not leak into their own gradient).
                pattern = _csr_matrices(torch.zeros_like(transition), ctx.offsets, ctx.radius)
                grads = [
                    torch.sparse.sampled_addmm(m, u, f.T, beta=0.0).values()
                    for m, u, f in zip(pattern, upstream_rows, flat)
                ]
                grad_transition = torch.stack(grads).reshape(transition.shape)
            if ctx.needs_input_grad[1]:
                grad_padded = _add_products_in_place(
                    transition,
                    upstream,
                    ctx.offsets,
                    ctx.radius,
                    total=torch.zeros_like(padded),
                    scatter=True,
                )
            return grad_transition, grad_padded, None, None

    return CsrStencilProduct


def contiguous_gates():
    """Whether an LSTM step computes each gate with its own matmul.

    `LSTMOptimizer`'s step applies its gates to a `(parameters, 4 * units)`
    product. Eager PyTorch runs an elementwise op on a column slice of it
    about 3× slower than on a contiguous tensor, so there one matmul per gate
    wins (29.6 → 17.5 ms on 85k parameters); XLA (TensorFlow's fused step,
    JAX) fuses the slices, and one matmul wins there (17.6 → 22.0 ms on JAX
    with four). BENCHMARKS.md, "Cost inside `model.fit`".
    """
    return keras.backend.backend() == "torch"


def updates_per_variable():
    """Whether optimizer updates must go variable by variable right now.

    Under a `tf.distribute` strategy, Keras' TensorFlow optimizer all-reduces
    the gradients and updates each (mirrored) variable on every replica in
    its own update context; an optimizer that updates all variables at once
    (`LSTMOptimizer`) then takes that per-variable path. Elsewhere (JAX's
    `DataParallel` is one SPMD program) it need not.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy()
