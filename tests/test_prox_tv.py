"""TV proxes: Condat 1-D kernel, 2-D dykstra/fista solvers, kernels vs their numpy twins."""
import numpy as np
import pytest

from calseg.errors import ConfigError, InputError
from calseg.prox import _dual_kernels, _kernels
from calseg.prox.norms import grid_edges, tv_value
from calseg.prox.tv import TVState, chain_families, prox_tv1d, prox_tv2d

from reference import (
    chain_matrix,
    diff_matrix,
    dykstra_mean_twin,
    family_gap_twin,
    family_prox_twin,
    grid_edges_loops,
    prox_graph_tv,
    tv1d_reference,
    tv1d_rows_twin,
    tv_dual_fista_twin,
    tv_prox_gap,
)

DTYPES = [np.float32, np.float64]
METHODS = ["dykstra", "fista", "fista_nb"]
ATOL = {np.float32: 2e-5, np.float64: 1e-10}


def _signals(rng, n_cases=60):
    """Random, piecewise-constant (+ small noise) and staircase 1-D signals of varied length."""
    out = []
    for i in range(n_cases):
        n = int(rng.integers(1, 40))
        kind = i % 3
        if kind == 0:
            y = rng.normal(size=n) * rng.uniform(0.1, 3)
        elif kind == 1:
            levels = rng.normal(size=6) * 3
            y = levels[np.sort(rng.integers(0, 6, size=n))] + 0.05 * rng.normal(size=n)
        else:
            y = np.repeat(rng.normal(size=4), 10)[:n] + np.arange(n) * 0.1
        out.append((y, float(rng.choice([1e-3, 0.05, 0.3, 1.0, 5.0]) * rng.uniform(0.5, 2))))
    return out


# ---------------------------------------------------------------------------------- 1-D Condat

@pytest.mark.parametrize("dtype", DTYPES)
def test_condat_matches_exact_reference(dtype):
    rng = np.random.default_rng(1)
    for y, lam in _signals(rng):
        y = y.astype(dtype)
        x = np.empty_like(y)
        _kernels.tv1d_condat(y, lam, x)
        ref = tv1d_reference(y.astype(np.float64), lam)
        scale = max(1.0, np.abs(y).max())
        np.testing.assert_allclose(x, ref, atol=ATOL[dtype] * scale, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_condat_optimality_conditions(dtype):
    # x = y - D^T u with u_k = cumsum(y - x)_k, |u| <= lam, u_{n} = 0, u = lam sign(x_k - x_{k+1})
    rng = np.random.default_rng(2)
    for y, lam in _signals(rng, 90):
        y = y.astype(dtype)
        x = prox_tv1d(y, lam)
        assert x.dtype == dtype and x.shape == y.shape
        u = np.cumsum(y.astype(np.float64) - x)
        tol = 1e-9 if dtype == np.float64 else 2e-4 * max(1, np.abs(y).max()) * len(y)
        assert abs(u[-1]) <= tol
        assert np.all(np.abs(u[:-1]) <= lam + tol)
        dx = x[:-1].astype(np.float64) - x[1:]
        jump = np.abs(dx) > 10 * tol
        np.testing.assert_allclose(u[:-1][jump], lam * np.sign(dx[jump]), atol=tol)


def test_condat_edge_cases():
    y = np.array([3.0, -1.0, 2.0, 7.0])
    np.testing.assert_array_equal(prox_tv1d(y, 0.0), y)              # zero weight: identity
    np.testing.assert_allclose(prox_tv1d(y, 1e6), np.full(4, y.mean()))  # huge weight: mean
    np.testing.assert_array_equal(prox_tv1d(np.full(5, 2.5), 1.0), np.full(5, 2.5))  # constant
    np.testing.assert_array_equal(prox_tv1d(np.array([4.0]), 1.0), [4.0])  # one sample
    # two samples: closed form, values move towards each other by lam until they meet
    np.testing.assert_allclose(prox_tv1d(np.array([0.0, 3.0]), 1.0), [1.0, 2.0])
    np.testing.assert_allclose(prox_tv1d(np.array([0.0, 3.0]), 2.0), [1.5, 1.5])
    # in-place use of the kernel (documented)
    z = np.array([0.0, 5.0, 5.2, 1.0, 1.1])
    ref = tv1d_reference(z, 0.4)
    _kernels.tv1d_condat(z, 0.4, z)
    np.testing.assert_allclose(z, ref, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tv1d_rows_kernel_vs_twin(dtype):
    rng = np.random.default_rng(3)
    Y = rng.normal(size=(5, 17)).astype(dtype)
    lam = np.array([0.0, 0.1, 0.5, 2.0, 50.0])
    X = np.empty_like(Y)
    _kernels.tv1d_rows(Y, lam, X)
    np.testing.assert_allclose(X, tv1d_rows_twin(Y, lam), atol=ATOL[dtype] * 3)


def test_prox_tv1d_columns_and_weights():
    rng = np.random.default_rng(4)
    Y = rng.normal(size=(30, 3))
    w = np.array([0.2, 0.0, 1.5])
    X = prox_tv1d(Y, w)
    for j in range(3):
        np.testing.assert_allclose(X[:, j], tv1d_reference(Y[:, j], w[j]), atol=1e-10)
    with pytest.raises(ConfigError, match="weight"):
        prox_tv1d(Y, [0.1, 0.2])
    with pytest.raises(ConfigError, match="weight"):
        prox_tv1d(Y, -1.0)
    with pytest.raises(InputError):
        prox_tv1d(np.zeros((2, 2, 2)), 1.0)


def test_condat_matches_condat_tv_package():
    condat_tv = pytest.importorskip("condat_tv")
    rng = np.random.default_rng(5)
    y = np.cumsum(rng.normal(size=5000)) * 0.1 + rng.normal(size=5000)
    np.testing.assert_allclose(prox_tv1d(y, 0.8), condat_tv.tv_denoise(y, 0.8), atol=1e-9)


# ----------------------------------------------------------------------------- chain families

@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (2, 2), (4, 7), (7, 4)])
@pytest.mark.parametrize("conn", [4, 8])
def test_chain_families_cover_every_edge_once(shape, conn):
    H, W = shape
    got = []
    for starts, lengths, stride in chain_families(shape, conn):
        assert np.all(lengths >= 2)
        for s, m in zip(starts, lengths):
            idx = s + stride * np.arange(m)
            got += [tuple(sorted(e)) for e in zip(idx[:-1], idx[1:])]
    want = sorted(tuple(sorted(e)) for e in grid_edges_loops(H, W, conn))
    assert sorted(got) == want
    assert sorted(map(tuple, grid_edges(shape, conn))) == want


# ------------------------------------------------------------------------ kernels vs twins

@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dykstra_kernels_vs_twins(dtype, serial):
    sfx = "_serial" if serial else ""
    k_mean = getattr(_kernels, "dykstra_mean" + sfx)
    k_prox = getattr(_kernels, "family_prox" + sfx)
    k_gap = getattr(_kernels, "family_gap" + sfx)
    rng = np.random.default_rng(6)
    H, W, r = 4, 5, 3
    fams = chain_families((H, W), 8)
    k = len(fams)
    Y = rng.normal(size=(r, H * W)).astype(dtype)
    Dall = (0.1 * rng.normal(size=(k, r, H * W))).astype(dtype)
    X = np.empty_like(Y)
    k_mean(Y, Dall, X)
    np.testing.assert_allclose(X, dykstra_mean_twin(Y, Dall), atol=ATOL[dtype] * 10)
    c = np.array([0.3, 0.0, 1.2])
    beta = np.array([0.5, 0.2, 0.0])
    for f, (s, ln, stride) in enumerate(fams):
        for group in (1, 3):
            Df, Dold = Dall[f].copy(), (Dall[f] * 0.5).astype(dtype)
            ngr = -(-len(s) // group)
            dot = np.zeros((r, ngr))
            want_df, want_old, want_dot = family_prox_twin(X, Df, Dold, c, beta, k, s, ln, stride, group)
            k_prox(X, Df, Dold, c, beta, k, s, ln, stride, group, dot)
            np.testing.assert_allclose(Df, want_df, atol=ATOL[dtype] * 20)
            np.testing.assert_allclose(Dold, want_old, atol=ATOL[dtype] * 20)
            np.testing.assert_allclose(dot, want_dot, atol=ATOL[dtype] * 100)
        gap, tvb = np.zeros((r, len(s))), np.zeros((r, len(s)))
        k_gap(X, Dall[f], c, k, s, ln, stride, gap, tvb)
        want_gap, want_tv = family_gap_twin(X, Dall[f], c, k, s, ln, stride)
        np.testing.assert_allclose(gap, want_gap, atol=ATOL[dtype] * 100)
        np.testing.assert_allclose(tvb, want_tv, atol=ATOL[dtype] * 100)


def _padded_index(H, W, conn):
    """Index of each ``grid_edges_loops`` edge in the kernels' padded (K, H + 1, W + 1) dual."""
    fam = {(0, 1): 0, (1, 0): 1, (1, 1): 2, (1, -1): 3}
    out = []
    for a, b in grid_edges_loops(H, W, conn):
        (ya, xa), (yb, xb) = divmod(int(a), W), divmod(int(b), W)
        k = fam[(yb - ya, xb - xa)]
        out.append((k, ya + 1, xa if k == 3 else xa + 1))   # anti-diagonal (i, j): a = (i, j + 1)
    return tuple(np.array(t) for t in zip(*out)) if out else (np.array([], int),) * 3


@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fista_nb_kernels_vs_twin(dtype, conn, serial):
    kern = _dual_kernels.tv_prox_fista_columns_serial if serial else _dual_kernels.tv_prox_fista_columns
    rng = np.random.default_rng(14)
    K = conn // 2
    for H, W in [(5, 7), (6, 4), (1, 6), (6, 1)]:
        n, r = H * W, 3
        D = diff_matrix(grid_edges_loops(H, W, conn), n)
        idx = _padded_index(H, W, conn)
        V = rng.normal(size=(r, H, W))
        c = np.array([0.3, 0.05, 1.0])
        s = c.astype(dtype)
        s = np.where(s.astype(np.float64) > c, np.nextafter(s, dtype(0)), s).astype(dtype)
        Q = np.zeros((r, K, H + 1, W + 1), dtype)
        q0 = 0.6 * rng.normal(size=(r, D.shape[0]))          # partly outside the box
        for j in range(r):
            Q[j][idx] = q0[j]
        step = 1.0 / (12.0 if conn == 8 else 8.0)
        for n_iter in (0, 1, 9):
            Qk, X, stats = Q.copy(), np.empty((r, H, W)), np.zeros((r, 3))
            # negative thresholds (thresh0 and rounding floor): never converged, n_iter steps
            kern(V, Qk, c, s, np.full(r, -1.0), dtype(step), -1.0, n_iter, 4, 50, 0, X, stats)
            assert np.all(stats[:, 1] == n_iter) and np.all(stats[:, 2] == 0)
            atol = 1e-10 if dtype == np.float64 else 2e-5
            for j in range(r):
                q, x = tv_dual_fista_twin(V[j].ravel(), q0[j], float(s[j]), step, n_iter, D)
                np.testing.assert_allclose(Qk[j][idx], q, atol=atol)
                np.testing.assert_allclose(X[j].ravel(), x, atol=atol * 10)
                # the gap is evaluated at the kernel's own (feasible) dual, in float64
                want_gap = tv_prox_gap(V[j].ravel() - D.T @ Qk[j][idx].astype(np.float64),
                                       Qk[j][idx].astype(np.float64), c[j], D)
                assert stats[j, 0] == pytest.approx(max(want_gap, 0.0), rel=1e-9, abs=1e-12)
                assert np.all(np.abs(Qk[j]) <= s[j])                 # exactly inside the box
                mask = np.ones(Qk[j].shape, bool)
                mask[idx] = False
                assert np.all(Qk[j][mask] == 0)                      # padding stays 0


@pytest.mark.parametrize("shape", [(2, 2), (3, 5), (6, 6), (9, 4)])
def test_grid_gradient_norm_bounds(shape):
    """The step of "fista_nb": ||D||^2 <= 8 (4-connected) and <= 12 (8-connected)."""
    H, W = shape
    for conn, bound in ((4, 8.0), (8, 12.0)):
        D = diff_matrix(grid_edges_loops(H, W, conn), H * W)
        assert np.linalg.eigvalsh(D.T @ D).max() <= bound * (1 + 1e-12)


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_fista_nb_float32_steps_meet_certified_tolerance(tol):
    """At tolerances >= 1e-3 the steps run in float32; the float64 certificate still holds,
    including for images far from zero (the mean is removed first)."""
    rng = np.random.default_rng(15)
    H, W = 9, 11
    D = diff_matrix(grid_edges_loops(H, W, 8), H * W)
    blob = 2.0 * (np.add.outer(np.arange(H), np.arange(W)) > 9).ravel()
    Y = 1e3 + blob[:, None] + 0.5 * rng.normal(size=(H * W, 2))
    X, _, info = prox_tv2d(Y, [0.2, 0.6], (H, W), method="fista_nb", tol=tol, max_iter=100000)
    assert info["converged"]
    for j, c in enumerate((0.2, 0.6)):
        ref, _ = prox_graph_tv(Y[:, j] - 1e3, c, D)
        err = np.linalg.norm(X[:, j] - 1e3 - ref)
        assert err <= np.sqrt(2 * info["gap"][j]) + 1e-9
        assert err <= tol * np.linalg.norm(Y[:, j] - Y[:, j].mean())


def test_fista_nb_float32_stall_moves_to_float64(monkeypatch):
    """A weight so large that a float32 dual cannot reach the target: forced to start in
    float32, the image stalls, continues in float64 and still meets the certified tolerance."""
    import calseg.prox.tv as tvmod

    rng = np.random.default_rng(16)
    H, W = 12, 12
    y = (np.add.outer(np.arange(H), np.arange(W)) > 10).ravel() * 40.0 + rng.normal(size=H * W)
    c, tol = 6.0, 1e-4
    V = (y - y.mean()).reshape(1, H, W)
    thr = np.array([0.5 * (tol * np.linalg.norm(V)) ** 2])
    n_edges = len(grid_edges_loops(H, W, 8))
    assert not tvmod._float32_steps_ok(np.array([c]), thr, n_edges)
    # the kernel alone, in float32 with stall detection: stops early with status -1
    Q = np.zeros((1, 4, H + 1, W + 1), np.float32)
    X, stats = np.empty_like(V), np.zeros((1, 3))
    _dual_kernels.tv_prox_fista_columns_serial(V, Q, np.array([c]), np.array([c], np.float32), thr,
                                               np.float32(1 / 12), 1e-15, 200000, 4, 50, 100, X, stats)
    assert stats[0, 2] == -1 and stats[0, 1] < 200000
    # through prox_tv2d with float32 forced: falls back to float64 and converges
    monkeypatch.setattr(tvmod, "_float32_steps_ok", lambda *a: True)
    x, state, info = prox_tv2d(y, c, (H, W), method="fista_nb", tol=tol, max_iter=200000)
    assert info["converged"] and state.arrays[0].dtype == np.float64
    # reference: dykstra far tighter (itself checked against the exact BVLS prox above)
    ref, _, _ = prox_tv2d(y, c, (H, W), method="dykstra", tol=1e-9, max_iter=200000)
    assert np.linalg.norm(x - ref) <= tol * np.linalg.norm(y - y.mean())


# ---------------------------------------------------------------------------------- 2-D prox

SHAPES = [(5, 6), (1, 9), (9, 1), (1, 1), (3, 3)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_prox_tv2d_matches_exact_reference(method, conn, dtype):
    rng = np.random.default_rng(7)
    tol = 1e-7 if dtype == np.float64 else 1e-4
    for H, W in SHAPES:
        n = H * W
        D = diff_matrix(grid_edges_loops(H, W, conn), n)
        Y = (rng.normal(size=(n, 3)) + 2.0 * (np.arange(n) % W > W // 2)[:, None]).astype(dtype)
        c = np.array([0.05, 0.4, 1.0])
        X, state, info = prox_tv2d(Y, c, (H, W), connectivity=conn, method=method, tol=tol,
                                   max_iter=20000)
        assert X.dtype == dtype and X.shape == Y.shape and info["converged"]
        for j in range(3):
            ref, _ = prox_graph_tv(Y[:, j].astype(np.float64), c[j], D)
            dev = np.linalg.norm(Y[:, j] - Y[:, j].mean())
            err = np.linalg.norm(X[:, j] - ref)
            # the certificate: ||x - x*|| <= sqrt(2 gap) <= tol * ||y - mean y||
            assert err <= tol * dev + 1e-5 * (dtype == np.float32) * np.sqrt(n) + 1e-12
            if dtype == np.float64:
                assert err <= np.sqrt(2 * info["gap"][j]) + 1e-9


@pytest.mark.parametrize("conn", [4, 8])
def test_dykstra_and_fista_agree(conn):
    rng = np.random.default_rng(8)
    H, W = 8, 10
    Y = rng.normal(size=(H * W, 2)) + 3.0 * (np.add.outer(np.arange(H), np.arange(W)) > 8).ravel()[:, None]
    Xd, _, info_d = prox_tv2d(Y, [0.8, 0.2], (H, W), connectivity=conn, method="dykstra", tol=1e-6, max_iter=20000)
    Xf, _, info_f = prox_tv2d(Y, [0.8, 0.2], (H, W), connectivity=conn, method="fista", tol=1e-6, max_iter=100000)
    assert info_d["converged"] and info_f["converged"]
    dev = np.linalg.norm(Y - Y.mean(0), axis=0)
    assert np.all(np.linalg.norm(Xd - Xf, axis=0) <= 2e-6 * dev)
    assert info_d["n_iter"] < info_f["n_iter"]
    Xn, _, info_n = prox_tv2d(Y, [0.8, 0.2], (H, W), connectivity=conn, method="fista_nb", tol=1e-6, max_iter=100000)
    assert info_n["converged"]
    assert np.all(np.linalg.norm(Xn - Xd, axis=0) <= 2e-6 * dev)


@pytest.mark.parametrize("method", METHODS)
def test_prox_tv2d_edge_cases(method):
    rng = np.random.default_rng(9)
    H, W = 4, 5
    Y = rng.normal(size=(H * W, 3))
    # zero weight -> identity (bit for bit)
    X, state, info = prox_tv2d(Y, 0.0, (H, W), method=method)
    np.testing.assert_array_equal(X, Y)
    # huge weight -> the column mean
    X, _, info = prox_tv2d(Y, 1e4, (H, W), method=method)
    np.testing.assert_allclose(X, np.broadcast_to(Y.mean(axis=0), Y.shape), atol=1e-12)
    assert info["n_mean"] == 3
    # constant input -> unchanged
    C = np.full((H * W, 2), 3.25)
    np.testing.assert_allclose(prox_tv2d(C, 0.7, (H, W), method=method)[0], C, atol=1e-12)
    # one pixel -> identity
    np.testing.assert_array_equal(prox_tv2d(np.array([[2.0, -1.0]]), 5.0, (1, 1), method=method)[0],
                                  [[2.0, -1.0]])
    # 1-D input returns 1-D
    y1 = Y[:, 0]
    x1, _, _ = prox_tv2d(y1, 0.3, (H, W), method=method, tol=1e-7, max_iter=50000)
    assert x1.shape == y1.shape
    np.testing.assert_allclose(x1, prox_graph_tv(y1, 0.3, diff_matrix(grid_edges_loops(H, W, 8), H * W))[0], atol=1e-7)


def test_prox_tv2d_1xN_equals_condat():
    rng = np.random.default_rng(10)
    y = rng.normal(size=(40, 2))
    for conn in (4, 8):
        for shape in ((1, 40), (40, 1)):
            X, _, _ = prox_tv2d(y, [0.3, 1.0], shape, connectivity=conn, tol=1e-7, max_iter=10000)
            np.testing.assert_allclose(X, prox_tv1d(y, [0.3, 1.0]), atol=1e-7)


def test_prox_tv2d_decreases_tv_and_objective():
    rng = np.random.default_rng(11)
    H, W = 10, 10
    Y = rng.normal(size=(H * W, 2))
    X, _, _ = prox_tv2d(Y, 0.5, (H, W), tol=1e-6)
    f_x = 0.5 * ((X - Y) ** 2).sum(0) + 0.5 * tv_value(X, (H, W), 8)
    for _ in range(20):  # no random perturbation does better
        Z = X + 1e-3 * rng.normal(size=X.shape)
        assert np.all(f_x <= 0.5 * ((Z - Y) ** 2).sum(0) + 0.5 * tv_value(Z, (H, W), 8) + 1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_warm_start_same_answer_fewer_iterations(method):
    rng = np.random.default_rng(12)
    H, W = 12, 12
    yy, xx = np.mgrid[:H, :W]
    base = ((yy - 6) ** 2 + (xx - 5) ** 2 < 12).ravel()[:, None] * np.array([1.0, 2.0])
    Y1 = base + 0.3 * rng.normal(size=base.shape)
    Y2 = Y1 + 0.01 * rng.normal(size=base.shape)  # the next outer iteration's input
    kw = dict(connectivity=8, method=method, tol=1e-5, max_iter=20000)
    _, state, info1 = prox_tv2d(Y1, 0.3, (H, W), **kw)
    assert isinstance(state, TVState)
    cold, _, info_cold = prox_tv2d(Y2, 0.3, (H, W), **kw)
    warm, _, info_warm = prox_tv2d(Y2, 0.3, (H, W), warm=state, **kw)
    assert info_cold["converged"] and info_warm["converged"]
    assert info_warm["n_iter"] < info_cold["n_iter"]
    dev = np.linalg.norm(Y2 - Y2.mean(0), axis=0)
    assert np.all(np.linalg.norm(warm - cold, axis=0) <= 2e-5 * dev)
    # a state of another shape / r / method is ignored, not an error
    X3, _, _ = prox_tv2d(Y2[:, :1], 0.3, (H, W), warm=state, **kw)
    np.testing.assert_allclose(X3[:, 0], cold[:, 0], atol=3e-5 * dev[0])
    X4, _, _ = prox_tv2d(Y2, 0.3, (H, W), warm="junk", **kw)
    np.testing.assert_allclose(X4, cold, atol=3e-5 * dev.max())


@pytest.mark.parametrize("method", METHODS)
def test_prox_tv2d_reports_non_convergence(method):
    rng = np.random.default_rng(13)
    Y = rng.normal(size=(64, 1))
    X, _, info = prox_tv2d(Y, 0.5, (8, 8), method=method, tol=1e-12, max_iter=3)
    assert not info["converged"] and info["n_iter"] == 3 and info["gap"][0] > 0


def test_prox_tv2d_validation():
    Y = np.zeros((12, 2))
    with pytest.raises(InputError, match="image_shape"):
        prox_tv2d(Y, 1.0, (5, 5))
    with pytest.raises(ConfigError, match="connectivity"):
        prox_tv2d(Y, 1.0, (3, 4), connectivity=6)
    with pytest.raises(ConfigError, match="method"):
        prox_tv2d(Y, 1.0, (3, 4), method="magic")
    with pytest.raises(ConfigError, match="tol"):
        prox_tv2d(Y, 1.0, (3, 4), tol=0)
    with pytest.raises(ConfigError, match="weight"):
        prox_tv2d(Y, [1.0, 2.0, 3.0], (3, 4))
