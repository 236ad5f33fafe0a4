"""Tests of the Random Walk Networks layers (docs/equations.md §S2), on every backend.

The reference is scipy: A is rebuilt as a CSR matrix from the stencil's
in-image entries, the converged walk is `scipy.sparse.linalg.spsolve`.
"""

import os

import keras
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
from absl.testing import parameterized
from keras import ops

from kzoo import backend
from kzoo.compat import TestCase
from kzoo.layers import random_walk as rw
from tests import helpers

pytestmark = pytest.mark.multibackend

IMPLEMENTATIONS = ["stencil"] + (["sparse"] if backend.supports_sparse() else [])
B, H, W, K, C, R = 2, 7, 6, 3, 4, 2


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.uniform(size=(B, H, W, C)).astype("float32")
    weights = -rng.uniform(0.5, 1.5, size=(C,)).astype("float32")
    potentials = rng.normal(size=(B, H, W, K)).astype("float32")
    return features, weights, potentials


def _transition(seed=0):
    features, weights, potentials = _inputs(seed)
    affinities = rw.pixel_affinities(features, weights, R)
    return ops.convert_to_numpy(rw.transition_matrix(affinities)), potentials


def _csr(stencil, radius=R):
    """A of one image as a scipy CSR matrix, from the stencil's in-image entries."""
    height, width = stencil.shape[:2]
    offsets = rw.neighbour_offsets(radius)
    rows, cols, vals = [], [], []
    for y in range(height):
        for x in range(width):
            for p, (dy, dx) in enumerate(offsets):
                if 0 <= y + dy < height and 0 <= x + dx < width:
                    rows.append(y * width + x)
                    cols.append((y + dy) * width + x + dx)
                    vals.append(stencil[y, x, p])
    n = height * width
    return sp.csr_matrix((np.array(vals, "float64"), (rows, cols)), shape=(n, n))


class RandomWalkFunctionsTest(TestCase):
    def test_offsets(self):
        self.assertEqual([len(rw.neighbour_offsets(r)) for r in range(6)], [1, 5, 13, 29, 49, 81])
        self.assertEqual(rw.radius_for_neighbours(81), 5)
        self.assertIsNone(rw.radius_for_neighbours(80))

    def test_affinities_match_numpy(self):
        features, weights, _ = _inputs()
        got = ops.convert_to_numpy(rw.pixel_affinities(features, weights, R))
        for p, (dy, dx) in enumerate(rw.neighbour_offsets(R)):
            for y, x in [(0, 0), (3, 2), (6, 5), (1, 4)]:
                if 0 <= y + dy < H and 0 <= x + dx < W:
                    d = np.abs(features[:, y, x] - features[:, y + dy, x + dx])
                    want = np.exp(d @ weights)
                else:
                    want = np.zeros(B)
                self.assertAllClose(got[:, y, x, p], want, rtol=1e-5, atol=1e-6)

    def test_rows_sum_to_one(self):
        transition, _ = _transition()
        self.assertAllClose(transition.sum(-1), np.ones((B, H, W)), atol=1e-6)
        for b in range(B):
            csr = _csr(transition[b])
            self.assertAllClose(np.asarray(csr.sum(1)).ravel(), np.ones(H * W), atol=1e-6)
            self.assertEqual(csr.nnz, np.count_nonzero(transition[b]))

    @parameterized.parameters(*[(i,) for i in IMPLEMENTATIONS])
    def test_step_and_converged_match_scipy(self, implementation):
        transition, f = _transition()
        step = ops.convert_to_numpy(
            rw.random_walk(f, transition, "step", implementation=implementation)
        )
        two = ops.convert_to_numpy(
            rw.random_walk(f, transition, "step", steps=2, implementation=implementation)
        )
        alpha = 0.6
        converged = ops.convert_to_numpy(
            rw.random_walk(
                f,
                transition,
                "converged",
                alpha=alpha,
                tolerance=1e-7,
                implementation=implementation,
            )
        )
        for b in range(B):
            a = _csr(transition[b])
            fb = f[b].reshape(-1, K).astype("float64")
            self.assertAllClose(step[b].reshape(-1, K), a @ fb, atol=1e-5)
            self.assertAllClose(two[b].reshape(-1, K), a @ (a @ fb), atol=1e-5)
            solved = (1 - alpha) * spl.spsolve((sp.identity(H * W) - alpha * a).tocsc(), fb)
            self.assertAllClose(converged[b].reshape(-1, K), solved, atol=2e-5)

    @parameterized.parameters(("float64", 1e-12), ("float32", 1e-5), ("float16", 2e-2))
    def test_stencil_step_in_every_dtype_ignores_outside_entries(self, dtype, tolerance):
        # Every backend path of `backend.stencil_product` (PyTorch: CSR matrices in
        # float32/float64, in-place products in float16) against scipy, with
        # non-zero weights outside the image, which A does not contain.
        if dtype == "float64" and keras.backend.backend() == "jax":
            self.skipTest("JAX computes in float32 unless jax_enable_x64 is set")
        rng = np.random.default_rng(4)
        transition = rng.uniform(size=(3, 5, 9, 13)).astype(dtype)
        f = rng.normal(size=(3, 5, 9, K)).astype(dtype)
        upstream = rng.normal(size=f.shape).astype(dtype)

        def loss(potentials, stencil):
            y = rw.random_walk_step(potentials, stencil, implementation="stencil")
            return ops.sum(ops.multiply(y, upstream)), y

        step = ops.convert_to_numpy(loss(f, transition)[1])
        self.assertEqual(step.dtype, np.dtype(dtype))
        inside = ops.convert_to_numpy(rw.neighbour_mask(5, 9, 2))[0]
        if dtype == "float64":
            grad_f, grad_a = helpers.gradients(lambda *a: loss(*a)[0], f, transition)
        for b in range(3):
            a = _csr(transition[b].astype("float64"), radius=2)
            fb = f[b].reshape(-1, K).astype("float64")
            self.assertAllClose(step[b].reshape(-1, K), a @ fb, atol=tolerance, rtol=tolerance)
            if dtype == "float64":
                g = upstream[b].reshape(-1, K)
                self.assertAllClose(grad_f[b].reshape(-1, K), a.T @ g, atol=1e-12)
                want = _csr(np.ones_like(transition[b]), radius=2).multiply(g @ fb.T).toarray()
                self.assertAllClose(_csr(grad_a[b], radius=2).toarray(), want, atol=1e-12)
                self.assertAllEqual(grad_a[b] * (1 - inside), np.zeros_like(grad_a[b]))

    def test_stencil_product_takes_offsets_in_any_order(self):
        # Permuting the offsets and the weights' last axis together changes
        # nothing, gradients included (the weights' gradient is computed per
        # stencil row, then put back in the offsets' order).
        transition, f = _transition()
        offsets = rw.neighbour_offsets(R)
        order = np.random.default_rng(2).permutation(len(offsets))
        upstream = np.random.default_rng(3).normal(size=f.shape).astype("float32")

        def loss(offsets):
            def fn(potentials, stencil):
                y = backend.stencil_product(stencil, rw._pad(potentials, R), offsets, R)
                return ops.sum(ops.multiply(y, upstream))

            return fn

        grad_f, grad_a = helpers.gradients(loss(offsets), f, transition)
        shuffled_f, shuffled_a = helpers.gradients(
            loss(offsets[order]), f, transition[..., order].copy()
        )
        self.assertAllClose(shuffled_f, grad_f, atol=1e-5)
        self.assertAllClose(shuffled_a, grad_a[..., order], atol=1e-5)

    def test_tolerance_sets_iterations(self):
        self.assertEqual(rw.converged_walk_steps(0.01, 1e-5), 2)
        self.assertEqual(rw.converged_walk_steps(0.5, 1e-3), 9)
        transition, f = _transition()
        a = _csr(transition[0])
        fb = f[0].reshape(-1, K).astype("float64")
        solved = 0.5 * spl.spsolve((sp.identity(H * W) - 0.5 * a).tocsc(), fb)
        loose = ops.convert_to_numpy(rw.random_walk(f, transition, alpha=0.5, tolerance=1e-3))
        error = np.abs(loose[0].reshape(-1, K) - solved).max()
        # Within the a-priori bound, and not converged beyond it (the bound is tight-ish).
        self.assertLess(error, 1e-3 * np.abs(f).max())
        self.assertGreater(error, 1e-7)

    @parameterized.parameters(*[(i,) for i in IMPLEMENTATIONS])
    def test_one_step_gradients_are_the_papers(self, implementation):
        transition, f = _transition()
        upstream = np.random.default_rng(1).normal(size=f.shape).astype("float32")

        def loss(potentials, stencil):
            y = rw.random_walk_step(potentials, stencil, implementation=implementation)
            return ops.sum(ops.multiply(y, upstream))

        grad_f, grad_a = helpers.gradients(loss, f, transition)
        inside = ops.convert_to_numpy(rw.neighbour_mask(H, W, R))[0]
        for b in range(B):
            a = _csr(transition[b])
            g = upstream[b].reshape(-1, K)
            fb = f[b].reshape(-1, K)
            # dL/df = A^T dL/dy
            self.assertAllClose(grad_f[b].reshape(-1, K), a.T @ g, atol=1e-5)
            # dL/dA = (dL/dy) f^T, at A's non-zeros only
            full = g @ fb.T
            want = _csr(np.ones_like(transition[b])).multiply(full).toarray()
            got = _csr(grad_a[b]).toarray()
            self.assertAllClose(got, want, atol=1e-5)
            self.assertAllClose(grad_a[b] * (1 - inside), np.zeros_like(grad_a[b]))

    def test_affinity_weight_gradient_matches_finite_differences(self):
        features, weights, f = _inputs()
        upstream = np.random.default_rng(2).normal(size=f.shape)

        def loss(w):
            transition = rw.transition_matrix(rw.pixel_affinities(features, w, R))
            y = rw.random_walk(f, transition, alpha=0.5, tolerance=1e-6)
            return ops.sum(ops.multiply(y, upstream.astype("float32")))

        (grad,) = helpers.gradients(loss, weights)
        eps = 1e-2
        for c in range(C):
            plus, minus = weights.copy(), weights.copy()
            plus[c] += eps
            minus[c] -= eps
            numeric = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
            self.assertAllClose(grad[c], numeric, rtol=2e-2, atol=2e-3)
        self.assertGreater(np.abs(grad).min(), 0)

    def test_training_affinities_and_gradients_equal_the_inference_ones(self):
        # Training runs them through kzoo.backend.fused (one XLA cluster on
        # TensorFlow); inference and exports through the plain ops.
        features, weights, _ = _inputs()
        shape = (B, H, W, len(rw.neighbour_offsets(R)))
        upstream = np.random.default_rng(3).normal(size=shape).astype("float32")
        layer = rw.PixelAffinity(R, kernel_initializer=keras.initializers.Constant(weights))
        self.assertAllClose(
            ops.convert_to_numpy(layer(features, training=True)),
            ops.convert_to_numpy(layer(features, training=False)),
            rtol=1e-6,
            atol=1e-7,
        )

        def loss(affinities):
            return lambda x, w: ops.sum(ops.multiply(affinities(x, w, radius=R), upstream))

        want = helpers.gradients(loss(rw.pixel_affinities), features, weights)
        got = helpers.gradients(loss(rw._training_affinities()), features, weights)
        for g, w in zip(got, want):
            self.assertGreater(np.abs(w).max(), 0)
            self.assertAllClose(g, w, rtol=1e-5, atol=1e-5)

    def test_affinity_targets_and_loss(self):
        rng = np.random.default_rng(3)
        labels = rng.integers(0, 3, size=(B, H, W))
        labels[0, 0, 0] = 255
        targets, mask = (ops.convert_to_numpy(t) for t in rw.affinity_targets(labels, R, 255))
        for p, (dy, dx) in enumerate(rw.neighbour_offsets(R)):
            for y in range(H):
                for x in range(W):
                    inside = 0 <= y + dy < H and 0 <= x + dx < W
                    other = labels[:, y + dy, x + dx] if inside else None
                    want_mask = (
                        inside & (labels[:, y, x] != 255) & (other != 255)
                        if inside
                        else np.zeros(B, bool)
                    )
                    self.assertAllEqual(mask[:, y, x, p], want_mask.astype("float32"))
                    if inside:
                        want = (labels[:, y, x] == other) & want_mask
                        self.assertAllEqual(targets[:, y, x, p], want.astype("float32"))
        predicted = rng.uniform(size=targets.shape).astype("float32")
        loss = rw.AffinityLoss(R, ignore_class=255, reduction=None)(labels, predicted)
        want = ((predicted - targets) ** 2 * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))
        self.assertAllClose(loss, want, rtol=1e-5)


class RandomWalkLayersTest(TestCase):
    def test_pixel_affinity_layer(self):
        self.run_layer_test(
            rw.PixelAffinity,
            init_kwargs={"radius": 2},
            input_shape=(2, 8, 8, 5),
            expected_output_shape=(2, 8, 8, 13),
            expected_num_trainable_weights=1,
            supports_masking=False,
        )
        layer = rw.PixelAffinity(radius=3)
        layer.build((None, 16, 16, 131))
        self.assertEqual(layer.count_params(), 131)  # the paper's k weights

    @parameterized.parameters(*[(i,) for i in IMPLEMENTATIONS])
    def test_random_walk_layer(self, implementation):
        for mode in ("step", "converged"):
            self.run_layer_test(
                rw.RandomWalk,
                init_kwargs={"mode": mode, "alpha": 0.3, "implementation": implementation},
                input_shape=[(2, 8, 8, 3), (2, 8, 8, 13)],
                expected_output_shape=(2, 8, 8, 3),
                expected_num_trainable_weights=0,
                supports_masking=False,
                run_training_check=False,
            )

    def test_layers_match_functions_and_round_trip(self):
        features, weights, f = _inputs()
        feat_in, f_in = keras.Input((H, W, C)), keras.Input((H, W, K))
        affinity = rw.PixelAffinity(R, kernel_initializer=keras.initializers.Constant(weights))
        walk = rw.RandomWalk("converged", alpha=0.4)
        model = keras.Model([feat_in, f_in], walk([f_in, affinity(feat_in)]))
        transition = rw.transition_matrix(rw.pixel_affinities(features, weights, R))
        want = ops.convert_to_numpy(rw.random_walk(f, transition, alpha=0.4))
        self.assertAllClose(model.predict([features, f], verbose=0), want, atol=1e-6)
        path = os.path.join(self.get_temp_dir(), "rw.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        self.assertAllClose(loaded.predict([features, f], verbose=0), want, atol=1e-6)

    def test_trains_in_fit(self):
        features, _, f = _inputs()
        labels = (features[..., 0] > 0.5).astype("int32")
        feat_in, f_in = keras.Input((H, W, C)), keras.Input((H, W, 2))
        affinities = rw.PixelAffinity(1, name="affinity")(feat_in)
        refined = rw.RandomWalk("step", name="walk")([f_in, affinities])
        model = keras.Model([feat_in, f_in], {"walk": refined, "affinity": affinities})
        # Logits, not a Softmax layer: on PyTorch (2.13, Keras 3.15) the backward
        # of a 4-D softmax fails with "grad_input must be contiguous".
        model.compile(
            keras.optimizers.SGD(0.5),
            loss={
                "walk": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                "affinity": rw.AffinityLoss(1),
            },
        )
        before = model.get_layer("affinity").get_weights()[0].copy()
        history = model.fit(
            [features, f[..., :2]], {"walk": labels, "affinity": labels}, epochs=5, verbose=0
        )
        self.assertLess(history.history["loss"][-1], history.history["loss"][0])
        self.assertFalse(np.allclose(model.get_layer("affinity").get_weights()[0], before))

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "radius"):
            rw.PixelAffinity(radius=-1)
        with self.assertRaisesRegex(ValueError, "alpha"):
            rw.RandomWalk(alpha=1.0)
        with self.assertRaisesRegex(ValueError, "mode"):
            rw.RandomWalk(mode="walk")
        with self.assertRaisesRegex(ValueError, "implementation"):
            rw.RandomWalk(implementation="dense")
        with self.assertRaisesRegex(ValueError, "PixelAffinity expects"):
            rw.PixelAffinity(2)(np.zeros((8, 8, 3), "float32"))
        walk = rw.RandomWalk(name="rw_bad")
        with self.assertRaisesRegex(ValueError, "rw_bad.*same height and width"):
            walk([np.zeros((1, 8, 8, 3), "float32"), np.zeros((1, 4, 4, 13), "float32")])
        with self.assertRaisesRegex(ValueError, "number of neighbours"):
            rw.RandomWalk()([np.zeros((1, 8, 8, 3), "float32"), np.zeros((1, 8, 8, 12), "float32")])
        with self.assertRaisesRegex(ValueError, "two inputs"):
            rw.RandomWalk()(np.zeros((1, 8, 8, 3), "float32"))

    @pytest.mark.skipif(backend.supports_sparse(), reason="the backend has sparse matrices")
    def test_sparse_unavailable_is_a_clear_error(self):
        transition, f = _transition()
        with self.assertRaisesRegex(ValueError, "sparse.*stencil"):
            rw.random_walk(f, transition, implementation="sparse")
