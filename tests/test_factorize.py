"""Public ``factorize``: validation, closed-form optimum, budget, certificate and rank growth,
and recovery of a planted synthetic movie."""
import warnings

import numpy as np
import pytest
from scipy.signal import lfilter

from calseg.errors import ConfigError, ConvergenceWarning, InputError
from calseg.factorize import Factorization, factorize


def svt_problem(seed=7):
    rng = np.random.default_rng(seed)
    T, P = 50, 70
    Y = rng.normal(size=(T, 4)) @ rng.normal(size=(4, P)) + 0.5 * rng.normal(size=(T, P))
    lam = 10.0
    s = np.linalg.svd(Y, compute_uv=False)
    Pstar = 0.5 * np.sum(np.minimum(s, lam) ** 2) + lam * np.sum(np.maximum(s - lam, 0.0))
    return Y, lam, Pstar, int(np.sum(s > lam))


NUCLEAR = dict(spatial=(1.0, 0.0, 0.0), temporal=(1.0, 0.0), nonnegative=False,
               operator="identity", n_background=0)


def test_nuclear_norm_case_reaches_svt_optimum():
    Y, lam, Pstar, k = svt_problem()
    res = factorize(Y, (7, 10), lam=lam, rank=10, max_iter=5000, tol=1e-12, certify=False,
                    **NUCLEAR)
    assert isinstance(res, Factorization)
    R = Y - res.A @ res.Z.T
    direct = 0.5 * np.sum(R ** 2) + lam * np.sum(
        np.linalg.norm(res.A, axis=0) * np.linalg.norm(res.Z, axis=0))
    assert abs(direct - Pstar) <= 1e-6 * Pstar
    assert abs(res.objective - Pstar) <= 1e-6 * Pstar
    assert res.converged and res.stop_reason in ("tol", "stalled")
    assert res.certificate is None and res.lam == lam
    assert np.all(np.diff(res.history) <= 0)
    assert res.B.shape == (70, 0) and res.F.shape == (50, 0)


def test_certificate_and_growth_from_too_small_rank():
    """Start with one column for a rank-k optimum: the polar search finds the missing
    directions, growth appends them, and the final point is certified."""
    Y, lam, Pstar, k = svt_problem()
    assert k >= 3
    res = factorize(Y, (7, 10), lam=lam, rank=1, max_iter=3000, tol=1e-10, certify=True,
                    grow_rank=True, max_grow=10, **NUCLEAR)
    assert res.n_grow >= k - 1
    assert abs(res.objective - Pstar) <= 1e-5 * Pstar
    cert = res.certificate
    assert cert is not None
    assert cert.objective - Pstar <= cert.gap + 1e-9 * Pstar     # the gap bounds the error
    assert cert.status == "certified"
    assert np.all(np.diff(res.history) <= 1e-12 * Pstar)
    # without growth at most the single start column remains: the certificate reports a large gap
    res1 = factorize(Y, (7, 10), lam=lam, rank=1, max_iter=3000, tol=1e-10, certify=True,
                     grow_rank=False, **NUCLEAR)
    assert res1.n_grow == 0 and res1.rank <= 1
    assert res1.certificate.status == "bounded"
    assert res1.certificate.gap >= res1.objective - Pstar - 1e-9 * Pstar
    assert res1.certificate.rho_low > lam


def test_growth_skips_atoms_with_too_small_support():
    """grow_min_support: an improving atom whose spatial factor has fewer pixels near its peak
    than asked is not appended (growth stops there); the certificate still bounds the gap."""
    Y, lam, Pstar, k = svt_problem()
    kw = dict(lam=lam, rank=1, max_iter=3000, tol=1e-10, certify=True, grow_rank=True,
              max_grow=10, **NUCLEAR)
    grown = factorize(Y, (7, 10), **kw)
    assert grown.n_grow >= 1
    stopped = factorize(Y, (7, 10), grow_min_support=71, **kw)    # more than the 70 pixels
    assert stopped.n_grow == 0 and stopped.rank <= 1
    assert stopped.certificate.rho_low > lam
    assert stopped.certificate.gap >= stopped.objective - Pstar - 1e-9 * Pstar


def test_budget_warning_and_stop_reason():
    Y, lam, Pstar, k = svt_problem()
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        res = factorize(Y, (7, 10), lam=lam, rank=5, max_iter=3, certify=False, **NUCLEAR)
    assert res.stop_reason == "max_iter" and not res.converged and res.n_iter == 3


def test_float32_decay_with_background():
    rng = np.random.default_rng(0)
    T, H, W = 60, 5, 6
    Y = (50.0 + rng.normal(size=(T, H * W))).astype(np.float32)
    Y[:, 7] += 5 * (rng.random(T) < 0.1)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = factorize(Y, (H, W), lam=0.5, tau=0.5, fps=10.0, rank=3, max_iter=30,
                        spatial=(1.0, 1.0, 0.0), certify=False,
                        callback=lambda i, f: seen.append(f))
    assert res.F.shape == (T, 5) and res.B.shape == (H * W, 5)
    assert len(seen) == res.n_iter and np.all(np.diff(seen) <= 0)
    # the background absorbs the baseline: B's DC coefficient ~ 50 sqrt(T)
    np.testing.assert_allclose(res.B[:, 0], 50 * np.sqrt(T), rtol=0.05)


@pytest.mark.parametrize("kwargs, name", [
    (dict(lam=-1.0), "lam"),
    (dict(lam=0.0), "lam"),
    (dict(lam=1.0, spatial=(1.0, 1.0)), "spatial"),
    (dict(lam=1.0, spatial=(0.0, 0.0, 1.0)), "spatial"),
    (dict(lam=1.0, temporal=(1.0, -1.0)), "temporal"),
    (dict(lam=1.0, operator="gaussian"), "operator"),
    (dict(lam=1.0, operator="decay", fps=10.0), "tau"),
    (dict(lam=1.0, operator="decay", tau=1.0), "fps"),
    (dict(lam=1.0, operator="decay", tau=1.0, fps=10.0, rise=1.0), "rise"),
    (dict(lam=1.0, rank=0), "rank"),
    (dict(lam=1.0, rank=2.5), "rank"),
    (dict(lam=1.0, connectivity=6), "connectivity"),
    (dict(lam=1.0, tol=0.0), "tol"),
    (dict(lam=1.0, max_iter=0), "max_iter"),
    (dict(lam=1.0, n_background=-1), "n_background"),
    (dict(lam=1.0, init="svd"), "init"),
    (dict(lam=1.0, certify="yes"), "certify"),
    (dict(lam=1.0, seed=-3), "seed"),
    (dict(lam=1.0, callback=5), "callback"),
])
def test_parameter_validation_names_the_parameter(kwargs, name):
    Y = np.zeros((10, 6))
    kwargs = {"operator": "identity", **kwargs}
    with pytest.raises(ConfigError) as exc:
        factorize(Y, (2, 3), **kwargs)
    msg = str(exc.value)
    assert msg.startswith(name) or f"{name} " in msg
    if "got" in msg and name not in ("tau", "fps"):
        assert "got" in msg


def test_input_validation():
    with pytest.raises(ConfigError, match="image_shape"):
        factorize(np.zeros((10, 6)), (2, 4), lam=1.0, operator="identity")
    with pytest.raises(InputError, match="Y"):
        factorize(np.zeros((10, 2, 3)), (2, 3), lam=1.0, operator="identity")
    with pytest.raises(InputError, match="init"):
        factorize(np.zeros((10, 6)), (2, 3), lam=1.0, operator="identity",
                  init=(np.ones((9, 2)), np.zeros((6, 2))))
    Y = np.ones((10, 6))
    Y[0, 0] = np.nan
    with pytest.raises(InputError, match="finite"):
        factorize(Y, (2, 3), lam=1.0, operator="identity")


def planted_movie(seed=1):
    """Four non-overlapping Gaussian blobs with sparse spikes through the decay kernel,
    on a baseline, plus white noise."""
    rng = np.random.default_rng(seed)
    H = W = 24
    T, fps, tau = 240, 10.0, 0.7
    g = np.exp(-1 / (fps * tau))
    yy, xx = np.mgrid[:H, :W]
    centers = [(6, 6), (6, 17), (17, 6), (17, 17)]
    Zt = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.8 ** 2)).ravel()
                   for cy, cx in centers], 1)
    Zt[Zt < 0.05] = 0
    S = (rng.random((T, 4)) < 0.04) * rng.uniform(0.5, 1.5, (T, 4))
    S[rng.integers(0, T, 4), np.arange(4)] = 1.0   # at least one spike each
    C = lfilter([1], [1, -g], S, axis=0)
    Y = (10.0 + C @ Zt.T + 0.1 * rng.normal(size=(T, H * W))).astype(np.float32)
    return Y, (H, W), fps, tau, Zt, S


def _corr(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b) + 1e-300))


def test_recovers_planted_neurons():
    """~7 s on an idle 2-core machine (numba TV prox); 20-50 s under heavy load."""
    Y, shape, fps, tau, Zt, S = planted_movie()
    lam = 0.5 * float(np.std(Y - Y.mean(axis=0)))   # the authors' rule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = factorize(Y, shape, lam=lam, tau=tau, fps=fps, rank=12, max_iter=300, tol=1e-6,
                        certify=False, seed=0)
    zc = np.array([[_corr(Zt[:, j], res.Z[:, i]) for i in range(res.rank)] for j in range(4)])
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-zc)
    z_match = zc[rows, cols]
    s_match = np.array([_corr(S[:, j], res.A[:, i]) for j, i in zip(rows, cols)])
    print("footprint corr", np.round(z_match, 3), "spike corr", np.round(s_match, 3))
    assert np.all(z_match > 0.9)
    assert np.all(s_match > 0.7)


def test_operator_object_and_explicit_background_match_named_options():
    """A ready operator and an explicit orthonormal F give the same result as the names."""
    from calseg.model.background import fourier_background
    from calseg.model.temporal import DecayOperator

    rng = np.random.default_rng(5)
    T, H, W = 40, 4, 5
    Y = 3.0 + rng.random((T, H * W))
    common = dict(lam=0.3, rank=3, max_iter=50, tol=1e-8, spatial=(1.0, 1.0, 0.0),
                  certify=True, grow_rank=False, certificate_tol=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = factorize(Y, (H, W), tau=0.5, fps=10.0, n_background=3, **common)
        b = factorize(Y, (H, W), operator=DecayOperator.from_tau(T, 0.5, 10.0),
                      background=fourier_background(T, 3), **common)
    assert a.objective == pytest.approx(b.objective, rel=1e-12)
    np.testing.assert_allclose(a.Z, b.Z, atol=1e-12)
    # the certificate sees the background (B refit): its objective is the solver's
    assert a.certificate.objective == pytest.approx(a.objective, rel=1e-6)
    assert a.certificate.tol == 0.5
    with pytest.raises(ConfigError, match="orthonormal"):
        factorize(Y, (H, W), operator="identity", lam=0.3, background=rng.random((T, 2)))


def test_support_restricts_the_start_columns_only_and_the_certificate_stays_valid():
    # One start column restricted to 10 pixels: growth appends unrestricted columns, the
    # restricted one never leaves its set, and the certificate (of the unrestricted problem)
    # still bounds the distance to the closed-form optimum.
    Y, lam, Pstar, k = svt_problem()
    rng = np.random.default_rng(0)
    support = np.zeros((70, 1), dtype=bool)
    support[:10, 0] = True
    A0 = rng.normal(size=(50, 1))
    Z0 = np.where(support, rng.normal(size=(70, 1)), 0.0)
    res = factorize(Y, (7, 10), lam=lam, init=(A0, Z0), support=support, max_iter=3000,
                    tol=1e-10, certify=True, grow_rank=True, max_grow=10, **NUCLEAR)
    assert res.n_grow >= 1
    assert res.support is not None and res.support.shape == res.Z.shape
    assert not np.any(res.Z[~res.support])
    restricted = ~res.support.all(axis=0)
    assert restricted.sum() <= 1 and res.support[:, ~restricted].all()
    cert = res.certificate
    assert cert.objective >= Pstar - 1e-9 * Pstar
    assert cert.objective - Pstar <= cert.gap + 1e-9 * Pstar
    with pytest.raises(InputError, match="support"):
        factorize(Y, (7, 10), lam=lam, init=(A0, Z0), support=support[:5], **NUCLEAR)


def test_grown_support_is_a_disk_around_the_atom_plus_its_pixels():
    from calseg.factorize import _grown_support

    h, w = 30, 40
    yy, xx = np.divmod(np.arange(h * w), w)
    psi = np.exp(-((yy - 10) ** 2 + (xx - 25) ** 2) / 8.0)
    psi[psi < 0.05] = 0.0
    psi[0] = 0.01                                   # a stray pixel of the atom far away
    got = _grown_support(psi, (h, w), 6.0)
    disk = (yy - 10) ** 2 + (xx - 25) ** 2 <= 36
    np.testing.assert_array_equal(got, disk | (psi > 0))
    assert _grown_support(psi, (h, w), None).all() and _grown_support(0 * psi, (h, w), 6.0).all()


def test_grow_reach_keeps_grown_columns_near_their_atom_and_the_certificate_valid():
    """Four planted cells, one seeded (its column restricted to a disk): growth finds the
    others, and with grow_reach their columns are disks around their atoms (the whole image
    without it); every footprint stays inside its set and the certificate is computed."""
    Y, shape, fps, tau, Zt, S = planted_movie()
    H, W = shape
    yy, xx = np.divmod(np.arange(H * W), W)
    support = ((yy - 6) ** 2 + (xx - 6) ** 2 <= 36)[:, None]
    A0 = np.maximum(lfilter([1, -np.exp(-1 / (fps * tau))], [1], Y[:, 6 * W + 6] - 10.0), 0)[:, None]
    Z0 = support * 0.1
    lam = 0.5 * float(np.std(Y - Y.mean(axis=0)))
    kw = dict(lam=lam, tau=tau, fps=fps, init=(A0, Z0), support=support, max_iter=300, tol=1e-6,
              certify=True, grow_rank=True, max_grow=4, seed=0, certificate_effort="low")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = factorize(Y, shape, grow_reach=6.0, **kw)
        free = factorize(Y, shape, **kw)
    assert res.n_grow >= 2 and free.n_grow >= 2
    assert not res.support.all(axis=0).any()                 # every column restricted
    assert free.support[:, 1:].all()                         # grown columns free without reach
    assert not np.any(res.Z[~res.support])
    # each grown column's set is a disk of radius 6 (plus its atom's pixels): a few cells' worth
    assert np.all(res.support[:, 1:].sum(axis=0) < 0.5 * H * W)
    cert = res.certificate
    assert cert.gap >= 0 and cert.rho_up >= cert.rho_low > 0
    with pytest.raises(ConfigError, match="grow_reach"):
        factorize(Y, shape, grow_reach=-1.0, **kw)
