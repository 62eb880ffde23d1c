"""Duality-gap certificate and rank growth (calseg.certify.gap).

Nuclear-norm case (l2-only signed norms): the optimum is singular value thresholding, so P* is
known in closed form and gap >= F - P* can be checked exactly; with an unpenalised background
the optimum is SVT of the background-projected data. A dense calcium-like decay operator is
built in the test and solved by accelerated proximal gradient (APG)."""
import json

import numpy as np
import pytest

from calseg.certify.gap import Atom, Certificate, append_atom, certify
from calseg.errors import ConfigError, InputError
from calseg.model.background import fourier_background
from calseg.prox.composite import CompositeNorm

L2 = CompositeNorm(1.0, 0.0, 0.0, nonnegative=False)


class DenseOp:
    """Temporal operator given as a dense (T, T) matrix (test-only)."""

    def __init__(self, D):
        self.D = np.asarray(D, dtype=np.float64)
        self.n_frames = self.D.shape[0]
        self.norm_sq = float(np.linalg.norm(self.D, 2) ** 2)

    def apply(self, X):
        return self.D @ X

    def adjoint(self, R):
        return self.D.T @ R


def decay_matrix(T, dt=0.2, tau=0.51 / np.log(2)):
    """Normalised causal exponential-decay dictionary (METHOD 1.2), built densely."""
    i = np.arange(T)
    M = np.tril(np.exp(-np.clip(i[:, None] - i[None, :], 0, None) * dt / tau))
    return M / np.linalg.norm(M, axis=0)


def svt_problem(seed=2, T=60, P=80, r0=5, noise=0.5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, r0)) @ rng.normal(size=(r0, P)) + noise * rng.normal(size=(T, P))


def svt_point(Y, lam, k):
    U, s, Vt = np.linalg.svd(Y, full_matrices=False)
    d = np.maximum(s[:k] - lam, 0)
    return U[:, :k] * np.sqrt(d), Vt[:k].T * np.sqrt(d), s


def p_star_svt(s, lam):
    return 0.5 * np.sum(np.minimum(s, lam) ** 2) + lam * np.sum(np.maximum(s - lam, 0))


def objective(Y, D, A, Z, lam, F=None):
    R = Y - D @ A @ Z.T
    if F is not None:
        R -= F @ np.linalg.lstsq(F, R, rcond=None)[0]
    theta = np.sum(np.linalg.norm(A, axis=0) * np.linalg.norm(Z, axis=0))
    return 0.5 * np.sum(R ** 2) + lam * theta


@pytest.mark.parametrize("background", [False, True])
def test_gap_bounds_suboptimality_at_truncated_svt(background):
    Y = svt_problem()
    T = Y.shape[0]
    lam = 12.0
    F = fourier_background(T, 3) if background else None
    Yp = Y - F @ (F.T @ Y) if background else Y       # optimum = SVT of the projected data
    op = DenseOp(np.eye(T))
    _, _, s = svt_point(Yp, lam, 0)
    Pstar = p_star_svt(s, lam)
    k_star = int(np.sum(s > lam))
    assert 2 <= k_star <= 6
    for k in range(0, k_star + 2):
        A, Z, _ = svt_point(Yp, lam, k)
        cert, atom = certify(Y, op, A, Z, lam=lam, temporal=L2, spatial=L2, background=F,
                             tol=1e-6)
        assert cert.objective == pytest.approx(objective(Y, np.eye(T), A, Z, lam, F), rel=1e-12)
        subopt = cert.objective - Pstar
        assert cert.gap >= subopt - 1e-9 * cert.objective
        assert cert.dual_value <= Pstar + 1e-9 * cert.objective     # weak duality
        assert cert.rho_low <= cert.rho_up
        if k < k_star:
            assert cert.status == "bounded" and subopt > 0
            assert cert.rho_low == pytest.approx(s[k], rel=1e-6)    # next singular value
            assert atom is not None and atom.rho > lam
        else:
            assert cert.status == "certified"
            assert cert.relative_gap <= 1e-6 and abs(subopt) <= 1e-8 * cert.objective


def test_gap_bounds_suboptimality_along_apg_with_decay_operator():
    Y = svt_problem(seed=3, T=40, P=50, r0=4)
    T = Y.shape[0]
    D = decay_matrix(T)
    op = DenseOp(D)
    lam = 8.0
    L = np.linalg.norm(D, 2) ** 2

    def svt(M, th):
        u, s, vt = np.linalg.svd(M, full_matrices=False)
        return u, np.maximum(s - th, 0), vt

    X = np.zeros_like(Y)
    V = X.copy()
    t = 1.0
    snaps = {}
    for it in range(1, 3001):
        u, s2, vt = svt(V - D.T @ (D @ V - Y) / L, lam / L)
        Xn = (u * s2) @ vt
        tn = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        V = Xn + (t - 1) / tn * (Xn - X)
        X, t = Xn, tn
        if it in (3, 10, 40, 150, 3000):
            k = int(np.sum(s2 > 1e-12))
            snaps[it] = (u[:, :k] * np.sqrt(s2[:k]), vt[:k].T * np.sqrt(s2[:k]))
    final, _ = certify(Y, op, *snaps[3000], lam=lam, temporal=L2, spatial=L2, tol=1e-6)
    assert final.status == "certified" and final.relative_gap <= 1e-6
    # P* lies in [dual_value, objective] of the converged point
    p_lo, p_hi = final.dual_value, final.objective
    assert p_hi - p_lo <= 1e-6 * p_hi
    prev_gap = np.inf
    for it in (3, 10, 40, 150):
        cert, _ = certify(Y, op, *snaps[it], lam=lam, temporal=L2, spatial=L2, tol=1e-6)
        assert cert.gap >= cert.objective - p_lo - 1e-9 * p_hi       # >= F - P*
        assert cert.gap >= 0
        assert cert.status == "bounded"
        assert cert.objective >= p_lo
        prev_gap = min(prev_gap, cert.gap)
    assert final.gap < prev_gap


@pytest.mark.parametrize("background", [False, True])
def test_append_atom_predicted_decrease_is_actual(background):
    Y = svt_problem(seed=4, T=40, P=30, r0=3)
    T = Y.shape[0]
    D = decay_matrix(T)
    op = DenseOp(D)
    lam = 6.0
    F = fourier_background(T, 3) if background else None
    rng = np.random.default_rng(0)
    A, Z = 0.1 * rng.normal(size=(T, 1)), 0.1 * rng.normal(size=(30, 1))
    cert, atom = certify(Y, op, A, Z, lam=lam, temporal=L2, spatial=L2, background=F)
    assert atom is not None and atom.rho > lam
    A2, Z2 = append_atom(Y, op, A, Z, atom, lam=lam, background=F)
    assert A2.shape == (T, 2) and Z2.shape == (30, 2)
    Dphi = D @ atom.phi
    if F is not None:
        Dphi -= F @ (F.T @ Dphi)
    predicted = (atom.rho - lam) ** 2 / (2 * (Dphi @ Dphi) * (atom.psi @ atom.psi))
    actual = objective(Y, D, A, Z, lam, F) - objective(Y, D, A2, Z2, lam, F)
    assert actual == pytest.approx(predicted, rel=1e-9)
    assert actual > 0
    with pytest.raises(InputError, match="does not decrease"):
        append_atom(Y, op, A, Z, Atom(atom.phi, -atom.psi, atom.rho), lam=lam, background=F)


def _blob_movie(seed, missed=True):
    """Two blobs with sparse calcium activity; the factorisation knows only the first."""
    rng = np.random.default_rng(seed)
    H, Wd, T = 12, 12, 60
    D = decay_matrix(T)
    z1 = np.zeros((H, Wd))
    z1[2:5, 2:5] = 1.0
    z2 = np.zeros((H, Wd))
    z2[7:10, 6:9] = 1.0
    a1 = 6.0 * (rng.uniform(size=T) < 0.1)
    a2 = 6.0 * (rng.uniform(size=T) < 0.1)
    Y = D @ (np.outer(a1, z1.ravel()) + np.outer(a2, z2.ravel())) + 0.3 * rng.normal(size=(T, H * Wd))
    return Y.astype(np.float32), D, a1, z1.ravel(), z2.ravel(), (H, Wd)


def test_missed_blob_gives_improving_atom():
    Y, D, a1, z1, z2, shape = _blob_movie(5)
    op = DenseOp(D)
    temporal = CompositeNorm(1.0, 1.0, 0.0, nonnegative=True)
    spatial = CompositeNorm(1.0, 1.0, 0.6, nonnegative=True, image_shape=shape)
    lam = 1.0
    A, Z = a1[:, None].astype(np.float64), z1[:, None].astype(np.float64)
    cert, atom = certify(Y, op, A, Z, lam=lam, temporal=temporal, spatial=spatial, tol=1e-3)
    assert cert.status == "bounded"
    assert cert.rho_low > lam and atom is not None and atom.rho == cert.rho_low
    assert cert.rho_low <= cert.rho_up
    # the atom sits on the missed blob
    assert atom.psi[z2 > 0].sum() > 0.8 * atom.psi.sum()
    assert temporal.value(atom.phi)[0] == pytest.approx(1, rel=1e-9)
    assert spatial.value(atom.psi)[0] == pytest.approx(1, rel=1e-9)
    A2, Z2 = append_atom(Y, op, A, Z, atom, lam=lam)
    cert2, _ = certify(Y, op, A2, Z2, lam=lam, temporal=temporal, spatial=spatial, tol=1e-3,
                       effort="low")
    assert cert2.objective < cert.objective
    json.dumps(cert.to_dict())


def test_float32_data_matches_float64():
    Y = svt_problem(seed=6, T=30, P=40, r0=3)
    op = DenseOp(np.eye(30))
    A, Z, _ = svt_point(Y, 5.0, 2)
    c64, _ = certify(Y, op, A, Z, lam=5.0, temporal=L2, spatial=L2)
    c32, _ = certify(Y.astype(np.float32), op, A, Z, lam=5.0, temporal=L2, spatial=L2)
    assert c32.objective == pytest.approx(c64.objective, rel=1e-5)
    assert c32.rho_up == pytest.approx(c64.rho_up, rel=1e-4)
    assert c32.rho_up >= c64.rho_up * (1 - 1e-6)


def test_certificate_is_frozen_and_serialisable():
    Y = svt_problem(seed=7, T=20, P=25, r0=2)
    cert, _ = certify(Y, DenseOp(np.eye(20)), np.zeros((20, 0)), np.zeros((25, 0)), lam=3.0,
                      temporal=L2, spatial=L2)
    assert isinstance(cert, Certificate)
    with pytest.raises(AttributeError):
        cert.gap = 0.0
    d = json.loads(json.dumps(cert.to_dict()))
    assert d["status"] in ("certified", "bounded") and d["bounds"]["split"] is None
    assert cert.objective == pytest.approx(0.5 * np.sum(Y ** 2))


def test_validation():
    Y = np.ones((5, 6))
    op = DenseOp(np.eye(5))
    A, Z = np.zeros((5, 1)), np.zeros((6, 1))
    with pytest.raises(ConfigError, match="lam"):
        certify(Y, op, A, Z, lam=0.0, temporal=L2, spatial=L2)
    with pytest.raises(InputError, match="Z must have shape"):
        certify(Y, op, A, np.zeros((7, 1)), lam=1.0, temporal=L2, spatial=L2)
    with pytest.raises(ConfigError, match="effort"):
        certify(Y, op, A, Z, lam=1.0, temporal=L2, spatial=L2, effort="max")
    with pytest.raises(InputError, match="background"):
        certify(Y, op, A, Z, lam=1.0, temporal=L2, spatial=L2, background=np.ones((4, 1)))


def test_zero_factorisation_and_lambda_max_with_decay_operator():
    """At X = 0 (no columns) the gap is exactly 0 once lam >= rho_up (lam_max corollary of
    METHOD 5.5), and below rho_low the atom improves; real DecayOperator, float32, background."""
    from calseg.model.temporal import DecayOperator

    rng = np.random.default_rng(11)
    T, shape = 80, (5, 6)
    op = DecayOperator(T, 0.8)
    F = fourier_background(T, 3)
    Y = (rng.normal(size=(T, 30)) + F @ rng.normal(size=(3, 30))).astype(np.float32)
    temporal = CompositeNorm(1.0, 1.0, 0.0)
    spatial = CompositeNorm(1.0, 1.0, 0.5, image_shape=shape)
    A0, Z0 = np.zeros((T, 0)), np.zeros((30, 0))
    c, atom = certify(Y, op, A0, Z0, lam=0.3, temporal=temporal, spatial=spatial, background=F)
    assert c.rho_low <= c.rho_up <= c.bounds["tv_rows"]
    Yp = Y - F @ (F.T @ Y.astype(np.float64))
    assert c.objective == pytest.approx(0.5 * np.sum(Yp ** 2), rel=1e-6)   # B refitted
    big, _ = certify(Y, op, A0, Z0, lam=1.001 * c.rho_up, temporal=temporal, spatial=spatial,
                     background=F)
    assert big.status == "certified" and big.gap == 0.0
    A1, Z1 = append_atom(Y, op, A0, Z0, atom, lam=0.9 * c.rho_low, background=F)
    after, _ = certify(Y, op, A1, Z1, lam=0.9 * c.rho_low, temporal=temporal, spatial=spatial,
                       background=F, effort="low")
    assert after.objective < c.objective


def _one_blob_fit(with_background, dtype=None, **extra):
    """The two-blob movie fitted with its first blob only, and the certify/improving_atom
    keywords: ``(Y, op, F, A, Z, kw)``."""
    from calseg.model.temporal import DecayOperator

    Y, D, a1, z1, z2, shape = _blob_movie(5)
    if dtype is not None:
        Y = Y.astype(dtype)
    T = Y.shape[0]
    op = DecayOperator.from_tau(T, 0.5, 10.0)
    F = fourier_background(T, 3) if with_background else None
    temporal = CompositeNorm(1.0, 1.0, 0.0, nonnegative=True)
    spatial = CompositeNorm(1.0, 1.0, 0.6, nonnegative=True, image_shape=shape)
    A, Z = a1[:, None].astype(np.float64), z1[:, None].astype(np.float64)
    kw = dict(lam=1.0, temporal=temporal, spatial=spatial, background=F, seed=3, **extra)
    return Y, op, F, A, Z, kw


@pytest.mark.parametrize("with_background", [False, True])
def test_improving_atom_from_precomputed_data_matches_direct(with_background):
    """Growth computes W = D^T P (Y - D A Z^T) from the solver's D^T P Y: same atom as from Y."""
    from calseg.certify.gap import improving_atom
    from calseg.model.objective import precompute

    Y, op, F, A, Z, kw = _one_blob_fit(with_background)
    direct = improving_atom(Y, op, A, Z, **kw)
    fast = improving_atom(Y, op, A, Z, pre=precompute(Y, op, F), **kw)
    assert direct is not None and fast is not None
    assert fast.rho == pytest.approx(direct.rho, rel=1e-6)
    np.testing.assert_allclose(fast.psi, direct.psi, atol=1e-6)


@pytest.mark.parametrize("with_background", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_certificate_from_precomputed_data_matches_direct(with_background, dtype):
    """The solver's D^T P Y and ||P Y||^2 give the same objective, residual terms, bounds and
    gap as the pass over Y that ``calseg certify`` makes."""
    from calseg.model.objective import precompute

    Y, op, F, A, Z, kw = _one_blob_fit(with_background, dtype=dtype, effort="low")
    direct, _ = certify(Y, op, A, Z, **kw)
    fast, _ = certify(Y, op, A, Z, pre=precompute(Y, op, F), **kw)
    rel = 1e-9 if dtype == np.float64 else 1e-4
    for key in ("objective", "dual_value", "gap", "rho_up", "rho_low"):
        assert getattr(fast, key) == pytest.approx(getattr(direct, key), rel=rel), key
    for key in ("residual_sq", "inner", "theta"):
        assert fast.bounds[key] == pytest.approx(direct.bounds[key], rel=rel), key
    assert fast.status == direct.status


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spread", [False, True])
def test_residual_correlation_from_precomputed_data(dtype, spread):
    """W = D^T P (Y - D A Z^T) from the solver's D^T P Y, against the float64 formula, with
    footprints on a few pixels (their columns updated) or most of them (one in-place BLAS
    product over every pixel)."""
    from calseg.certify.gap import _polar_data_pre
    from calseg.model.objective import precompute
    from calseg.model.temporal import DecayOperator

    rng = np.random.default_rng(11)
    T, P, r = 120, 300, 3
    Y = rng.standard_normal((T, P)).astype(dtype)
    op = DecayOperator.from_tau(T, 0.5, 10.0)
    F = fourier_background(T, 3)
    A = np.abs(rng.standard_normal((T, r)))
    Z = np.zeros((P, r))
    used = rng.random(P) < (0.9 if spread else 0.03)
    Z[used] = np.abs(rng.standard_normal((int(used.sum()), r)))
    W = _polar_data_pre(precompute(Y, op, F), op, A, Z, F)
    assert W.dtype == dtype and W.flags.c_contiguous
    Pm = np.eye(T) - F @ F.T
    R = Pm @ (Y.astype(np.float64) - np.asarray(op.apply(A)) @ Z.T)
    want = np.asarray(op.adjoint(R))
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(W, want, atol=tol * np.abs(want).max())


def test_certificate_reuses_a_given_lower_search():
    """``lower=``: growth's last search at the same point is the certificate's lower bound
    (its value recomputed there); the upper bounds and the gap are unchanged."""
    from calseg.certify.gap import improving_atom
    from calseg.model.objective import precompute

    Y, op, F, A, Z, kw = _one_blob_fit(True, effort="low")
    pre = precompute(Y, op, F)
    atom = improving_atom(Y, op, A, Z, pre=pre, **kw)
    own, _ = certify(Y, op, A, Z, pre=pre, **kw)
    given, best = certify(Y, op, A, Z, pre=pre, lower=atom, **kw)
    assert given.rho_low >= atom.rho * (1 - 1e-9)          # at least the given pair's value
    assert given.rho_low <= given.rho_up
    for key in ("objective", "gap", "rho_up", "dual_value"):
        assert getattr(given, key) == pytest.approx(getattr(own, key), rel=1e-12), key
    assert best is not None and best.rho == pytest.approx(given.rho_low)


def test_certificate_reuses_the_searched_residual_correlation():
    """``data=``: the W growth's last search returned is the certificate's W at that point
    (nothing recomputed, same certificate); a W of the wrong shape is ignored."""
    from calseg.certify.gap import improving_atom
    from calseg.model.objective import precompute

    Y, op, F, A, Z, kw = _one_blob_fit(True, effort="low")
    pre = precompute(Y, op, F)
    atom, W = improving_atom(Y, op, A, Z, pre=pre, return_data=True, **kw)
    assert improving_atom(Y, op, A, Z, pre=pre, **kw).rho == atom.rho
    W_before = W.copy()
    own, _ = certify(Y, op, A, Z, pre=pre, lower=atom, **kw)
    given, _ = certify(Y, op, A, Z, pre=pre, lower=atom, data=W, **kw)
    np.testing.assert_array_equal(W, W_before)                # not modified
    for key in ("objective", "gap", "rho_up", "rho_low", "dual_value"):
        assert getattr(given, key) == getattr(own, key), key
    # a residual correlation that is not this one would change the bounds: it is used as given
    shifted, _ = certify(Y, op, A, Z, pre=pre, lower=atom, data=2 * W, **kw)
    assert shifted.rho_up > own.rho_up
    wrong, _ = certify(Y, op, A, Z, pre=pre, lower=atom, data=W[:-1], **kw)
    assert wrong.rho_up == own.rho_up


def test_check_finite_false_only_skips_the_pass_over_the_data():
    """check_finite=False (factorize, which checked Y itself) gives the same certificate and
    atom; with the default a NaN in Y is refused with a message naming it."""
    from calseg.certify.gap import improving_atom

    Y, op, F, A, Z, kw = _one_blob_fit(True, effort="low")
    c1, a1 = certify(Y, op, A, Z, **kw)
    c2, a2 = certify(Y, op, A, Z, check_finite=False, **kw)
    assert c1.to_dict() | {"seconds": 0} == c2.to_dict() | {"seconds": 0}
    np.testing.assert_array_equal(a1.psi, a2.psi)
    assert improving_atom(Y, op, A, Z, check_finite=False, **kw).rho == improving_atom(Y, op, A, Z, **kw).rho
    bad = Y.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="Y contains NaN"):
        certify(bad, op, A, Z, **kw)
