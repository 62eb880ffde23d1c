"""CompositeNorm: value, exact composite prox vs independent references, wrong orders differ."""
import numpy as np
import pytest

from calseg.errors import ConfigError
from calseg.prox.composite import CompositeNorm
from calseg.prox.norms import group_l2_shrink, soft_threshold
from calseg.prox.tv import prox_tv2d

from reference import (
    composite_objective,
    composite_prox_primal_dual,
    composite_prox_reference,
    diff_matrix,
    grid_edges_loops,
)


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_composite_prox_matches_joint_reference(conn, dtype):
    rng = np.random.default_rng(20)
    H, W = 5, 6
    D = diff_matrix(grid_edges_loops(H, W, conn), H * W)
    for trial in range(10):
        nonneg = bool(trial % 2)
        a, b, c = rng.uniform(0, 1.5), rng.uniform(0, 0.8), rng.uniform(0, 0.6)
        Y = (rng.normal(size=(H * W, 3)) * rng.uniform(0.5, 3) + rng.uniform(-1, 1)).astype(dtype)
        steps = np.array([0.5, 1.0, 2.0])
        h = CompositeNorm(a, b, c, nonnegative=nonneg, image_shape=(H, W), connectivity=conn, tv_tol=1e-7,
                          tv_max_iter=20000)
        X, state = h.prox(Y, steps)
        assert X.dtype == dtype and X.shape == Y.shape
        for j in range(3):
            s = steps[j]
            ref = composite_prox_reference(Y[:, j].astype(np.float64), s * a, s * b, s * c, D, nonneg)
            atol = 2e-6 if dtype == np.float64 else 1e-5 * max(1, np.abs(Y).max())
            np.testing.assert_allclose(X[:, j], ref, atol=atol)
            if nonneg:
                assert np.all(X[:, j] >= 0)


def test_composite_prox_beats_generic_primal_dual_and_wrong_orders_differ():
    # independent of every composition argument: a generic primal-dual solver of the summed
    # objective; the composed prox must reach an objective no larger, and the two wrong
    # orders (soft before TV, l2 first) must land visibly elsewhere.
    rng = np.random.default_rng(21)
    H, W = 5, 6
    D = diff_matrix(grid_edges_loops(H, W, 8), H * W)
    wrong_soft_first, wrong_l2_first = [], []
    for trial in range(3):
        nonneg = bool(trial % 2)
        a, b, c = rng.uniform(0.3, 1.5), rng.uniform(0.1, 0.8), rng.uniform(0.1, 0.6)
        y = rng.normal(size=H * W) * 2 + rng.uniform(-1, 1)
        h = CompositeNorm(a, b, c, nonnegative=nonneg, image_shape=(H, W), tv_tol=1e-7, tv_max_iter=20000)
        x, _ = h.prox(y, 1.0)
        x_pd = composite_prox_primal_dual(y, a, b, c, D, nonneg, iters=3000)
        if nonneg:
            assert np.all(x >= 0)
        f = composite_objective(x, y, a, b, c, D)
        assert f <= composite_objective(x_pd, y, a, b, c, D) + 1e-9
        np.testing.assert_allclose(x, x_pd, atol=5e-3)
        tv = lambda v: prox_tv2d(v, c, (H, W), tol=1e-7, max_iter=20000)[0]  # noqa: E731
        w1 = group_l2_shrink(tv(soft_threshold(y, b, nonnegative=nonneg)), a)
        w2 = soft_threshold(tv(group_l2_shrink(y, a)), b, nonnegative=nonneg)
        wrong_soft_first.append(np.linalg.norm(w1 - x))
        wrong_l2_first.append(np.linalg.norm(w2 - x))
    assert np.median(wrong_soft_first) > 0.05 and np.median(wrong_l2_first) > 0.05


def test_composite_special_cases_closed_form():
    rng = np.random.default_rng(22)
    Y = rng.normal(size=(12, 4))
    steps = np.array([0.0, 0.3, 1.0, 5.0])
    # l2 only, signed: group shrink; zero step: identity
    X, st = CompositeNorm(2.0, nonnegative=False).prox(Y, steps)
    assert st is None
    np.testing.assert_array_equal(X[:, 0], Y[:, 0])
    for j in range(1, 4):
        nrm = np.linalg.norm(Y[:, j])
        np.testing.assert_allclose(X[:, j], max(0, 1 - 2 * steps[j] / nrm) * Y[:, j])
    # l2 + nonneg: shrink of the positive part
    X, _ = CompositeNorm(1.0, nonnegative=True).prox(Y, 0.5)
    P = np.maximum(Y, 0)
    np.testing.assert_allclose(X, P * np.maximum(0, 1 - 0.5 / np.linalg.norm(P, axis=0)))
    # l1 only signed: soft threshold; huge steps: zero
    X, _ = CompositeNorm(0.0, 1.0, nonnegative=False).prox(Y, 0.4)
    np.testing.assert_allclose(X, np.sign(Y) * np.maximum(np.abs(Y) - 0.4, 0))
    X, _ = CompositeNorm(1.0, 1.0, 1.0, image_shape=(3, 4)).prox(Y, 1e6)
    np.testing.assert_array_equal(X, 0)


def test_composite_value_and_warm_state():
    rng = np.random.default_rng(23)
    H, W = 4, 5
    D = diff_matrix(grid_edges_loops(H, W, 4), H * W)
    X = rng.normal(size=(H * W, 3))
    h = CompositeNorm(1.5, 0.5, 0.25, image_shape=(H, W), connectivity=4)
    want = 1.5 * np.linalg.norm(X, axis=0) + 0.5 * np.abs(X).sum(0) + 0.25 * np.abs(D @ X).sum(0)
    np.testing.assert_allclose(h.value(X), want)
    assert h.value(X[:, 0]).shape == (1,)
    Y1, st = h.prox(X, 0.5)
    assert st is not None
    Y2, st2 = h.prox(X, 0.5, warm=st)
    np.testing.assert_allclose(Y1, Y2, atol=1e-5)
    Y3, _ = h.prox(X[:, :2], 0.5, warm=st)  # other r: ignored
    np.testing.assert_allclose(Y3, Y1[:, :2], atol=1e-5)
    assert h.last_tv_info["converged"]


def test_composite_validation():
    with pytest.raises(ConfigError, match="tv must be 0"):
        CompositeNorm(1.0, 0.0, 0.5)
    with pytest.raises(ConfigError, match="l1"):
        CompositeNorm(1.0, -0.1)
    with pytest.raises(ConfigError, match="connectivity"):
        CompositeNorm(1.0, image_shape=(3, 3), connectivity=5)
    with pytest.raises(ConfigError, match="tv_method"):
        CompositeNorm(1.0, tv=1.0, image_shape=(3, 3), tv_method="x")
    with pytest.raises(ConfigError, match="step"):
        CompositeNorm(1.0).prox(np.ones((3, 2)), -1.0)
