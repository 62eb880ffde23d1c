"""Dual norm of the composite norm (calseg.certify.dualnorm) against independent references:
closed forms, a scalar root finder on the defining equation, CVXPY (skipped when absent) and
the prox-based path of METHOD 5.1."""
import numpy as np
import pytest
from scipy.optimize import brentq

from calseg.certify.dualnorm import dual_norm, single_pixel_lower
from calseg.errors import ConfigError, InputError
from calseg.prox.composite import CompositeNorm
from calseg.prox.norms import grid_edges

try:
    import cvxpy as cp
except ImportError:  # pragma: no cover - optional oracle
    cp = None

needs_cvxpy = pytest.mark.skipif(cp is None, reason="cvxpy not installed")


def _h(x, a, b, c, G):
    """Independent evaluation of the composite norm (dense edge matrix)."""
    tv = np.abs(G @ x).sum() if G is not None else 0.0
    return a * np.linalg.norm(x) + b * np.abs(x).sum() + c * tv


def _edge_matrix(shape, conn):
    E = grid_edges(shape, conn)
    n = shape[0] * shape[1]
    G = np.zeros((len(E), n))
    G[np.arange(len(E)), E[:, 0]] = 1.0
    G[np.arange(len(E)), E[:, 1]] = -1.0
    return G


@pytest.mark.parametrize("nonneg", [True, False])
def test_l2_only_closed_form(nonneg):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(30, 6))
    mu, X = dual_norm(W, CompositeNorm(2.0, 0.0, 0.0, nonnegative=nonneg))
    V = np.maximum(W, 0) if nonneg else W
    np.testing.assert_allclose(mu, np.linalg.norm(V, axis=0) / 2.0, rtol=1e-12)
    np.testing.assert_allclose(np.einsum("ij,ij->j", W, X), mu, rtol=1e-12)


@pytest.mark.parametrize("nonneg", [True, False])
def test_pure_l1_closed_form(nonneg):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(25, 5))
    mu, X = dual_norm(W, CompositeNorm(0.0, 0.5, 0.0, nonnegative=nonneg))
    V = np.maximum(W, 0) if nonneg else np.abs(W)
    np.testing.assert_allclose(mu, V.max(axis=0) / 0.5, rtol=1e-14)
    np.testing.assert_allclose(np.einsum("ij,ij->j", W, X), mu, rtol=1e-14)
    np.testing.assert_allclose(0.5 * np.abs(X).sum(axis=0), 1.0)


@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("n", [40, 300])
def test_l2_l1_matches_scalar_root(nonneg, n):
    """Closed form (top-k partition or full sort + quadratic) vs brentq on ||S_{mu b}(w)|| = a mu;
    n = 300 has columns whose root involves more than the 64 largest entries."""
    rng = np.random.default_rng(2)
    a, b = 0.7, 1.3
    W = rng.normal(size=(n, 8)) * rng.uniform(0.1, 3, size=8)
    W[:, :3] = 1.0 + 0.01 * rng.normal(size=(n, 3))           # flat: root needs ~all entries
    mu, X = dual_norm(W, CompositeNorm(a, b, 0.0, nonnegative=nonneg))
    for j in range(W.shape[1]):
        w = W[:, j]

        def f(m):
            s = np.maximum(w - m * b, 0) if nonneg else np.sign(w) * np.maximum(np.abs(w) - m * b, 0)
            return np.linalg.norm(s) - a * m

        ref = brentq(f, 1e-12, np.abs(w).max() / b + 1, xtol=1e-15, rtol=1e-14)
        assert mu[j] == pytest.approx(ref, rel=1e-10)
        assert _h(X[:, j], a, b, 0, None) == pytest.approx(1.0, rel=1e-12)
        assert w @ X[:, j] == pytest.approx(ref, rel=1e-10)
        if nonneg:
            assert np.all(X[:, j] >= 0)


def test_nonpositive_column_has_zero_dual_norm():
    W = -np.abs(np.random.default_rng(3).normal(size=(12, 2)))
    for tv in (0.0, 0.5):
        mu, X = dual_norm(W, CompositeNorm(1.0, 1.0, tv, nonnegative=True, image_shape=(3, 4)))
        assert np.all(mu == 0) and np.all(X == 0)


@needs_cvxpy
@pytest.mark.parametrize("conn", [8, 4])
def test_tv_dual_norm_matches_cvxpy(conn):
    rng = np.random.default_rng(4 + conn)
    shape = (4, 5)
    n = 20
    G = _edge_matrix(shape, conn)
    for trial in range(6):
        a, b, c = rng.uniform(0.3, 2), rng.uniform(0, 1), rng.uniform(0.05, 0.8)
        nonneg = bool(trial % 2)
        norm = CompositeNorm(a, b, c, nonnegative=nonneg, image_shape=shape, connectivity=conn)
        W = rng.normal(size=(n, 2)) + rng.uniform(-0.5, 1)
        mu, X = dual_norm(W, norm, tol=1e-9)
        for j in range(2):
            u = cp.Variable(n)
            cons = [a * cp.norm(u, 2) + b * cp.norm(u, 1) + c * cp.norm(G @ u, 1) <= 1]
            if nonneg:
                cons.append(u >= 0)
            ref = cp.Problem(cp.Maximize(W[:, j] @ u), cons).solve(solver=cp.CLARABEL)
            assert mu[j] == pytest.approx(ref, rel=2e-7)
            assert W[:, j] @ X[:, j] == pytest.approx(ref, rel=2e-7)
            assert W[:, j] @ X[:, j] <= mu[j] * (1 + 1e-12)
            assert _h(X[:, j], a, b, c, G) == pytest.approx(1.0, rel=1e-10)
            if nonneg:
                assert np.all(X[:, j] >= 0)


def test_tv_bracket_is_certified_and_tight():
    """mu is an upper end certified by a dual point, <w, X> a feasible lower end; they meet."""
    rng = np.random.default_rng(5)
    shape = (6, 7)
    G = _edge_matrix(shape, 8)
    norm = CompositeNorm(1.0, 1.0, 0.6, nonnegative=True, image_shape=shape)
    W = rng.normal(size=(42, 10))
    mu, X = dual_norm(W, norm, tol=1e-8)
    vals = np.einsum("ij,ij->j", W, X)
    assert np.all(vals <= mu * (1 + 1e-12))
    assert np.all(mu - vals <= 1e-8 * mu)
    for j in range(10):
        assert _h(X[:, j], 1.0, 1.0, 0.6, G) == pytest.approx(1.0, rel=1e-10)
    # cheap bounds: single-pixel atoms below, the TV-free dual norm above
    lo = single_pixel_lower(W, norm)
    hi, _ = dual_norm(W, CompositeNorm(1.0, 1.0, 0.0, nonnegative=True))
    assert np.all(lo <= mu * (1 + 1e-12)) and np.all(mu <= hi * (1 + 1e-12))
    assert np.all(hi <= np.minimum(np.linalg.norm(np.maximum(W, 0), axis=0), np.maximum(W, 0).max(0)) + 1e-12)


def test_single_pixel_lower_uses_true_atom_norms():
    norm = CompositeNorm(1.0, 0.5, 0.3, nonnegative=True, image_shape=(3, 4))
    E = np.eye(12)
    np.testing.assert_allclose(single_pixel_lower(E, norm), 1.0 / norm.value(E), rtol=1e-14)


def test_prox_path_agrees_with_certified_path():
    """METHOD 5.1 verbatim (bisection with CompositeNorm(0, l1, tv).prox) vs the dual path."""
    rng = np.random.default_rng(6)
    norm = CompositeNorm(1.0, 0.4, 0.5, nonnegative=True, image_shape=(3, 3), tv_method="fista",
                         tv_tol=1e-9, tv_max_iter=3000)
    W = rng.normal(size=(9, 2)) + 0.5
    mu_d, X_d = dual_norm(W, norm, tol=1e-9)
    mu_p, X_p = dual_norm(W, norm, tol=1e-7, method="prox")
    np.testing.assert_allclose(mu_p, mu_d, rtol=1e-6)
    np.testing.assert_allclose(np.einsum("ij,ij->j", W, X_p), mu_d, rtol=1e-6)


def test_one_dimensional_input_and_validation():
    norm = CompositeNorm(1.0, 1.0, 0.0, nonnegative=True)
    w = np.array([3.0, -1.0, 0.5])
    mu, x = dual_norm(w, norm)
    assert np.ndim(mu) == 1 and x.shape == (3,)
    with pytest.raises(ConfigError, match="l2 > 0"):
        dual_norm(np.ones((4, 1)), CompositeNorm(0.0, 1.0, 0.5, image_shape=(2, 2)))
    with pytest.raises(ConfigError, match="tol"):
        dual_norm(w, norm, tol=0)
    with pytest.raises(ConfigError, match="method"):
        dual_norm(w, norm, method="magic")
    with pytest.raises(InputError, match="NaN"):
        dual_norm(np.array([np.nan, 1.0]), norm)


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tv_dual_fista_kernel_matches_numpy_twin(conn, dtype):
    """The numba dual-FISTA kernel follows the numpy iteration step for step (restarts
    included), serial and threaded, and its output lies in the rounded-down box exactly."""
    from calseg.certify.dualnorm import _box, _tv_dual_fista, _tv_dual_fista_numpy

    rng = np.random.default_rng(7)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    for H, W, m in [(7, 9, 3), (12, 11, 4), (1, 6, 2), (6, 1, 2), (1, 1, 1)]:
        V3 = rng.normal(size=(H, W, m)).astype(dtype)
        scale = rng.uniform(0.05, 1.0, size=m)
        shapes = [(H, W - 1), (H - 1, W), (H - 1, W - 1), (H - 1, W - 1)][:conn // 2]
        # starts partly outside the box: both versions clip them first
        p = [(0.5 * rng.normal(size=s + (m,))).astype(dtype) for s in shapes]
        keep = [pi.copy() for pi in p]
        sc = _box(scale, dtype)
        for n_iter in (0, 1, 6, 40):
            want = _tv_dual_fista_numpy(V3, [pi.copy() for pi in p], scale, n_iter, conn)
            for parallel in (False, True):
                got = _tv_dual_fista(V3, p, scale, n_iter, conn, parallel=parallel)
                assert len(got) == len(want)
                for g, w in zip(got, want):
                    assert g.dtype == dtype and g.shape == w.shape
                    np.testing.assert_allclose(g, w, rtol=0, atol=tol)
                    assert np.all(np.abs(g) <= sc)                  # exactly inside the box
        for a, b in zip(p, keep):                                    # the start is not modified
            np.testing.assert_array_equal(a, b)
