"""Temporal operator D, background atoms and the expanded objective, against dense references."""
import numpy as np
import pytest

from calseg.errors import ConfigError
from calseg.model.background import fourier_background
from calseg.model.objective import objective, precompute, smooth_loss
from calseg.model.temporal import DecayOperator, IdentityOperator


def dense_decay(T, gamma, rise_gamma=None):
    """Dense D built independently: Toeplitz kernel (closed form), unit-norm columns."""
    k = np.arange(T)
    if rise_gamma is None:
        h = gamma ** k
    else:
        h = (gamma ** (k + 1) - rise_gamma ** (k + 1)) / (gamma - rise_gamma)
    lag = k[:, None] - k[None, :]
    K = np.where(lag >= 0, h[np.clip(lag, 0, None)], 0.0)
    return K / np.linalg.norm(K, axis=0)


@pytest.mark.parametrize("rise", [None, 0.08])
def test_apply_adjoint_match_dense(rise):
    T, fps, tau = 40, 10.0, 0.7
    op = DecayOperator.from_tau(T, tau, fps, rise=rise)
    g = np.exp(-1 / (fps * tau))
    gr = None if rise is None else np.exp(-1 / (fps * rise))
    D = dense_decay(T, g, gr)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(T, 3))
    np.testing.assert_allclose(op.apply(X), D @ X, atol=1e-12)
    np.testing.assert_allclose(op.adjoint(X), D.T @ X, atol=1e-12)
    np.testing.assert_allclose(op.apply(X[:, 0]), D @ X[:, 0], atol=1e-12)
    # unit column norms, col_norms are the norms of the unscaled truncated kernels
    np.testing.assert_allclose(np.linalg.norm(op.apply(np.eye(T)), axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(op.norm_sq, np.linalg.norm(D, 2) ** 2, rtol=1e-10)


def test_ar1_column_norm_formula():
    T, g = 25, 0.8
    op = DecayOperator(T, g)
    j = np.arange(T)
    np.testing.assert_allclose(op.col_norms, np.sqrt((1 - g ** (2 * (T - j))) / (1 - g * g)))


def test_adjointness_and_norm_sq_large():
    T = 700  # above the dense shortcut: Lanczos path
    op = DecayOperator.from_tau(T, 1.0, 15.0, rise=0.05)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=T), rng.normal(size=T)
    assert abs(op.apply(x) @ y - x @ op.adjoint(y)) <= 1e-10 * np.linalg.norm(x) * np.linalg.norm(y) * 10
    D = op.apply(np.eye(T))
    assert op.norm_sq == pytest.approx(np.linalg.norm(D, 2) ** 2, rel=1e-9)
    assert op.norm_sq is op.norm_sq  # cached float


def test_float32_path():
    T, P = 60, 5000  # more columns than one filtering block
    op = DecayOperator.from_tau(T, 0.5, 20.0)
    rng = np.random.default_rng(3)
    Y = rng.normal(size=(T, P)).astype(np.float32)
    out = op.adjoint(Y)
    assert out.dtype == np.float32 and out.shape == (T, P)
    ref = op.adjoint(Y.astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert op.apply(Y).dtype == np.float32


def test_identity_operator():
    op = IdentityOperator(7)
    x = np.arange(14.0).reshape(7, 2)
    np.testing.assert_array_equal(op.apply(x), x)
    np.testing.assert_array_equal(op.adjoint(x), x)
    assert op.norm_sq == 1.0


def test_operator_validation():
    with pytest.raises(ConfigError, match="gamma"):
        DecayOperator(10, 1.5)
    with pytest.raises(ConfigError, match="tau"):
        DecayOperator.from_tau(10, -1.0, 10.0)
    with pytest.raises(ConfigError, match="rise_gamma"):
        DecayOperator(10, 0.5, rise_gamma=0.5)
    with pytest.raises(ValueError, match="shape"):
        DecayOperator(10, 0.5).apply(np.zeros(9))


def test_fourier_background():
    F = fourier_background(50, 5)
    np.testing.assert_allclose(F.T @ F, np.eye(5), atol=1e-12)
    t = np.arange(50)
    np.testing.assert_allclose(F[:, 0], 1 / np.sqrt(50))
    np.testing.assert_allclose(F[:, 1], np.cos(2 * np.pi * t / 50) * np.sqrt(2 / 50), atol=1e-12)
    np.testing.assert_allclose(F[:, 4], np.sin(4 * np.pi * t / 50) * np.sqrt(2 / 50), atol=1e-12)
    assert fourier_background(10, 0).shape == (10, 0)
    with pytest.raises(ConfigError, match="n_background"):
        fourier_background(4, 5)


class _L2L1:
    def __init__(self, l2, l1):
        self.l2, self.l1 = l2, l1

    def value(self, X):
        return self.l2 * np.linalg.norm(X, axis=0) + self.l1 * np.abs(X).sum(axis=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_objective_matches_direct(dtype):
    rng = np.random.default_rng(4)
    T, P, r, k = 30, 24, 3, 3
    op = DecayOperator.from_tau(T, 0.6, 10.0)
    F = fourier_background(T, k)
    Y = (100.0 + rng.normal(size=(T, P))).astype(dtype)  # big baseline: cancellation test
    A, Z, B = rng.random((T, r)), rng.random((P, r)), rng.normal(size=(P, k))
    B[:, 0] += 100.0 * np.sqrt(T)
    D = dense_decay(T, op.gamma)
    Y64 = Y.astype(np.float64)
    R = Y64 - D @ A @ Z.T - F @ B.T
    ta, tz = _L2L1(1.0, 0.5), _L2L1(1.0, 1.0)
    direct = 0.5 * np.sum(R ** 2) + 0.3 * np.sum(ta.value(A) * tz.value(Z))
    got = objective(Y, op, A, Z, B, F, lam=0.3, temporal=ta, spatial=tz)
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    assert got == pytest.approx(direct, rel=rtol)
    pre = precompute(Y, op, F)
    assert pre.DtY.dtype == dtype
    assert smooth_loss(pre, op, A, Z, B) == pytest.approx(0.5 * np.sum(R ** 2), rel=rtol)
    # without background
    pre0 = precompute(Y, op, None)
    R0 = Y64 - D @ A @ Z.T
    assert smooth_loss(pre0, op, A, Z) == pytest.approx(0.5 * np.sum(R0 ** 2), rel=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rise", [None, 0.05])
@pytest.mark.parametrize("m", [1, 7, 300])
def test_filter_kernel_matches_lfilter(dtype, rise, m):
    """The numba AR filter against scipy.signal.lfilter (its twin), forward and adjoint."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(m)
    op = DecayOperator.from_tau(53, 0.4, 30.0, rise=rise)
    X = rng.standard_normal((53, m)).astype(dtype)
    inv = 1.0 / op.col_norms
    fwd = lfilter(op._b, op._a, X.astype(np.float64) * inv[:, None], axis=0)
    adj = lfilter(op._b, op._a, X.astype(np.float64)[::-1], axis=0)[::-1] * inv[:, None]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    got_f, got_a = op.apply(X), op.adjoint(X)
    assert got_f.dtype == dtype and got_a.dtype == dtype
    np.testing.assert_allclose(got_f, fwd, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got_a, adj, rtol=rtol, atol=rtol)
