"""Building blocks: soft thresholding, group shrinkage, graph TV value."""
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from calseg.errors import ConfigError
from calseg.prox.norms import grid_edges, group_l2_shrink, soft_threshold, tv_value

from reference import diff_matrix, grid_edges_loops


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_threshold_is_scalar_prox(dtype):
    rng = np.random.default_rng(30)
    X = rng.normal(size=(6, 3)).astype(dtype) * 2
    t = np.array([0.0, 0.5, 3.0])
    for nonneg in (False, True):
        Y = soft_threshold(X, t, nonnegative=nonneg)
        assert Y.dtype == dtype
        for (i, j), x in np.ndenumerate(X):
            lo = 0.0 if nonneg else -10
            res = minimize_scalar(lambda v: t[j] * abs(v) + 0.5 * (v - x) ** 2, bounds=(lo, 10),
                                  method="bounded", options={"xatol": 1e-10})
            assert abs(Y[i, j] - res.x) < 1e-6


def test_group_l2_shrink_optimality():
    rng = np.random.default_rng(31)
    X = rng.normal(size=(8, 4))
    t = np.array([0.0, 1.0, 2.5, 100.0])
    Y = group_l2_shrink(X, t)
    np.testing.assert_array_equal(Y[:, 0], X[:, 0])
    np.testing.assert_array_equal(Y[:, 3], 0)
    for j in (1, 2):  # KKT: x - y = t y / ||y|| for y != 0
        y = Y[:, j]
        np.testing.assert_allclose(X[:, j] - y, t[j] * y / np.linalg.norm(y))
    np.testing.assert_array_equal(group_l2_shrink(np.zeros(5), 1.0), 0)
    assert group_l2_shrink(X[:, 1], 1.0).shape == (8,)
    with pytest.raises(ConfigError, match="t must be"):
        group_l2_shrink(X, [1.0, 2.0])


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (5, 1), (4, 6)])
def test_tv_value_against_dense_difference_matrix(conn, shape):
    rng = np.random.default_rng(32)
    H, W = shape
    X = rng.normal(size=(H * W, 3))
    D = diff_matrix(grid_edges_loops(H, W, conn), H * W)
    np.testing.assert_allclose(tv_value(X, shape, conn), np.abs(D @ X).sum(0))
    assert len(grid_edges(shape, conn)) == len(D)
