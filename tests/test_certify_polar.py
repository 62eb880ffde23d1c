"""Polar bounds (calseg.certify.polar): rho_low <= rho* <= rho_up against an exhaustive search on
tiny problems, exactness in the closed-form cases, rigour of the spectral bound."""
import numpy as np
import pytest

from calseg.certify.dualnorm import dual_norm
from calseg.certify.polar import polar_lower, polar_upper, sigma_max_upper
from calseg.errors import ConfigError, InputError
from calseg.prox.composite import CompositeNorm


def _simplex_grid(T, N):
    """All d >= 0 with sum(d) = 1 and N d integer, shape (T, n_points)."""
    if T == 1:
        return np.ones((1, 1))
    pts = []
    for i in range(N + 1):
        rest = _simplex_grid(T - 1, N - i) if N - i > 0 else np.zeros((T - 1, 1))
        if N - i > 0:
            rest = rest * (N - i) / N
        pts.append(np.vstack([np.full((1, rest.shape[1]), i / N), rest]))
    return np.hstack(pts)


def _signed_grid(T, N):
    """The grid of :func:`_simplex_grid` copied into every orthant (the l1 sphere)."""
    G = _simplex_grid(T, N)
    signs = np.array(np.meshgrid(*[[1.0, -1.0]] * T)).reshape(T, -1)
    return np.hstack([G * sg[:, None] for sg in signs.T])


def exhaustive_polar(W, temporal, spatial, N):
    """Interval [lo, hi] containing rho*(W) (T small), by a grid over the simplex of temporal
    directions (nonnegative phi) or over the whole l1 sphere (signed phi).

    rho* = max_{d in simplex} g(d) / h_A(d) with g(d) = h_Z°(W^T d) (g, h_A positively
    homogeneous, phi >= 0). Every direction d* lies within ||d - d*||_inf < 1/N of a grid point
    d (round N d* keeping the sum), so ||d - d*||_2 <= delta = sqrt(T)/N. g is sublinear with
    g(v) <= ||W^T v||_2 / l2_Z <= sigma_max(W) ||v|| / l2_Z =: Lg ||v||, and
    h_A(v) <= (l2_A + l1_A sqrt(T)) ||v|| =: Lh ||v||, hence
    g(d*)/h_A(d*) <= (g(d) + Lg delta) / (h_A(d) - Lh delta): the grid maximum of the right side
    is a certified upper end, the grid maximum of feasible values a lower end.
    """
    T = W.shape[0]
    Dgrid = _simplex_grid(T, N) if temporal.nonnegative else _signed_grid(T, N)
    mu, X = dual_norm(W.T @ Dgrid, spatial, tol=1e-6)       # certified either way
    g_lo = np.einsum("ij,ij->j", W.T @ Dgrid, X)          # feasible values
    hA = temporal.value(Dgrid)
    delta = np.sqrt(T) / N
    Lg = np.linalg.norm(W, 2) / spatial.l2
    Lh = temporal.l2 + temporal.l1 * np.sqrt(T)
    lo = float(np.max(g_lo / hA))
    hi = float(np.max((mu + Lg * delta) / (hA - Lh * delta)))
    return lo, hi


def _tiny_W(rng, kind, T, shape):
    P = shape[0] * shape[1]
    W = rng.normal(size=(T, P))
    if kind == "blob":
        blob = np.zeros(shape)
        blob[1:3, 1:3] = 1.0
        W += 2.5 * np.outer(rng.uniform(0.5, 1.0, T) * (rng.uniform(size=T) < 0.7), blob.ravel())
    return W


@pytest.mark.parametrize("kind,seed", [("noise", 0), ("noise", 1), ("blob", 2), ("blob", 3)])
def test_bounds_bracket_exhaustive_polar(kind, seed):
    rng = np.random.default_rng(seed)
    T, shape = 3, (3, 4)
    temporal = CompositeNorm(1.0, 1.0, 0.0, nonnegative=True)
    spatial = CompositeNorm(1.0, 0.5, 0.4, nonnegative=True, image_shape=shape)
    W = _tiny_W(rng, kind, T, shape)
    true_lo, true_hi = exhaustive_polar(W, temporal, spatial, N=130)
    assert true_hi - true_lo < 0.2 * true_lo               # the search is informative
    rho_low, phi, psi = polar_lower(W, temporal, spatial, n_starts=6, max_iter=50)
    rho_up, bounds = polar_upper(W, temporal, spatial)
    # the returned pair is feasible and attains rho_low
    assert temporal.value(phi)[0] == pytest.approx(1.0, rel=1e-9)
    assert spatial.value(psi)[0] == pytest.approx(1.0, rel=1e-9)
    assert np.all(phi >= 0) and np.all(psi >= 0)
    assert phi @ W @ psi == pytest.approx(rho_low, rel=1e-9)
    assert rho_low <= true_hi
    assert rho_low >= 0.9 * true_lo                            # alternating max finds it here
    for name, b in bounds.items():
        assert b >= true_lo * (1 - 1e-9), name
    assert rho_up == min(bounds.values())
    # U3 sandwich: within the factor (a' + b') / b' = 2 of the polar
    assert bounds["tv_rows"] <= 2 * true_hi


@pytest.mark.parametrize("seed", [0, 1])
def test_signed_factors_bracket_exhaustive_polar(seed):
    """Both factors signed (|W| in U1/U2, both signs of every row in U3)."""
    rng = np.random.default_rng(20 + seed)
    T, shape = 2, (3, 4)
    temporal = CompositeNorm(1.0, 0.7, 0.0, nonnegative=False)
    spatial = CompositeNorm(1.0, 0.5, 0.4, nonnegative=False, image_shape=shape)
    W = _tiny_W(rng, "blob", T, shape)
    true_lo, true_hi = exhaustive_polar(W, temporal, spatial, N=400)
    assert true_hi - true_lo < 0.2 * true_lo
    rho_low, phi, psi = polar_lower(W, temporal, spatial, n_starts=6, max_iter=50)
    rho_up, bounds = polar_upper(W, temporal, spatial)
    assert phi @ W @ psi == pytest.approx(rho_low, rel=1e-9)
    assert temporal.value(phi)[0] == pytest.approx(1.0) and spatial.value(psi)[0] == pytest.approx(1.0)
    assert 0.9 * true_lo <= rho_low <= true_hi
    for name, b in bounds.items():
        assert b >= true_lo * (1 - 1e-9), name


def test_pure_l1_temporal_makes_row_bound_exact():
    """With ||phi||_A = b'||phi||_1 the polar is max_k h_Z°(W_k) / b' exactly (METHOD 5.2)."""
    rng = np.random.default_rng(7)
    shape = (4, 4)
    temporal = CompositeNorm(0.0, 2.0, 0.0, nonnegative=True)
    spatial = CompositeNorm(1.0, 1.0, 0.5, nonnegative=True, image_shape=shape)
    W = rng.normal(size=(9, 16))
    mu, _ = dual_norm(W.T, spatial, tol=1e-10)
    exact = mu.max() / 2.0
    rho_up, bounds = polar_upper(W, temporal, spatial, tol=1e-8)
    assert bounds["spectral"] == np.inf and bounds["split"] == np.inf
    assert rho_up == pytest.approx(exact, rel=1e-7) and rho_up >= exact * (1 - 1e-9)
    rho_low, phi, psi = polar_lower(W, temporal, spatial, n_starts=4)
    assert rho_low == pytest.approx(exact, rel=1e-6)


def test_nuclear_case_is_exact():
    """l2/l2 without sign constraints: polar = sigma_max(W) / (a a')."""
    rng = np.random.default_rng(8)
    W = rng.normal(size=(40, 55))
    temporal = CompositeNorm(2.0, 0.0, 0.0, nonnegative=False)
    spatial = CompositeNorm(0.5, 0.0, 0.0, nonnegative=False)
    s = np.linalg.norm(W, 2)
    rho_up, bounds = polar_upper(W, temporal, spatial)
    assert rho_up == pytest.approx(s, rel=1e-9) and rho_up >= s
    rho_low, phi, psi = polar_lower(W, temporal, spatial)
    assert rho_low == pytest.approx(s, rel=1e-6) and rho_low <= s * (1 + 1e-12)


def test_nonnegative_l2_case_on_nonnegative_matrix_is_exact():
    """Perron-Frobenius: for W >= 0 the nonnegative l2/l2 polar is sigma_max(W)."""
    rng = np.random.default_rng(9)
    W = rng.random((30, 20))
    nrm = CompositeNorm(1.0, 0.0, 0.0, nonnegative=True)
    s = np.linalg.norm(W, 2)
    rho_up, _ = polar_upper(W, nrm, nrm)
    rho_low, _, _ = polar_lower(W, nrm, nrm)
    assert rho_low == pytest.approx(s, rel=1e-7) and rho_up == pytest.approx(s, rel=1e-9)
    assert rho_low <= rho_up


def test_sigma_max_upper_collatz_wielandt_is_valid_and_tight():
    rng = np.random.default_rng(10)
    M = np.maximum(rng.normal(size=(200, 300)), 0)
    s = np.sqrt(np.linalg.eigvalsh(M @ M.T)[-1])
    ub = sigma_max_upper(M, power_iters=40, dense_limit=10)       # Collatz-Wielandt path
    assert s <= ub <= 1.01 * s
    ub32 = sigma_max_upper(M.astype(np.float32), power_iters=40, dense_limit=10)
    assert s <= ub32 <= 1.01 * s
    S = rng.normal(size=(50, 60))
    assert sigma_max_upper(S) == pytest.approx(np.linalg.norm(S, 2), rel=1e-9)
    assert sigma_max_upper(S) >= np.linalg.norm(S, 2)


def test_validation():
    nrm = CompositeNorm(1.0, 1.0, 0.0)
    with pytest.raises(InputError, match="shape"):
        polar_upper(np.ones(5), nrm, nrm)
    with pytest.raises(ConfigError, match="effort"):
        polar_upper(np.ones((3, 4)), nrm, nrm, effort="max")
    with pytest.raises(InputError, match="image_shape"):
        polar_upper(np.ones((3, 4)), nrm, CompositeNorm(1.0, 1.0, 0.5, image_shape=(3, 3)))
    with pytest.raises(ConfigError, match="n_starts"):
        polar_lower(np.ones((3, 4)), nrm, nrm, n_starts=0)
