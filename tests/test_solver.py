"""Block prox-linear solver: monotone accepted iterates, the SVT optimum, pruning and merging."""
import warnings

import numpy as np
import pytest

from calseg.errors import ConvergenceWarning
from calseg.model.background import fourier_background
from calseg.model.objective import _big_t_times, _big_times, precompute
from calseg.model.temporal import DecayOperator, IdentityOperator
from calseg.prox.composite import CompositeNorm
from calseg.solver.bcd import (_diag_lipschitz, _merged_support, bcd, merge_duplicates,
                               prune_zero_columns)
from calseg.solver.init import init_factors


def dense_objective(Y, D, F, A, Z, B, lam, temporal, spatial):
    """Independent objective: form the residual."""
    R = Y.astype(np.float64) - D @ A @ Z.T - F @ B.T
    return 0.5 * np.sum(R ** 2) + lam * np.sum(temporal.value(A) * spatial.value(Z))


def small_problem(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    H = W = 6
    T, P = 40, H * W
    op = DecayOperator.from_tau(T, 0.5, 10.0)
    D = op.apply(np.eye(T))
    Ztrue = np.zeros((P, 2))
    Ztrue[[7, 8, 13, 14], 0] = 1.0
    Ztrue[[27, 28, 33], 1] = 1.0
    S = (rng.random((T, 2)) < 0.1) * rng.uniform(1, 2, (T, 2))
    F = fourier_background(T, 3)
    Y = 5.0 + D @ S @ Ztrue.T + 0.1 * rng.normal(size=(T, P))
    spatial = CompositeNorm(1.0, 0.5, 0.3, image_shape=(H, W), connectivity=8, tv_tol=1e-8,
                            tv_max_iter=2000)
    temporal = CompositeNorm(1.0, 1.0)
    return Y.astype(dtype), op, D, F, spatial, temporal


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_objective_never_increases_between_accepted_iterates(dtype):
    """Run k = 1, 2, ... iterations from the same start (the solver is deterministic) and
    check the directly computed objective of each returned iterate is nonincreasing."""
    Y, op, D, F, spatial, temporal = small_problem(dtype)
    if dtype == np.float32:  # TV is exercised by the float64 case; keep this one cheap
        spatial = CompositeNorm(1.0, 0.5, 0.0)
    pre = precompute(Y, op, F)
    assert pre.DtY.dtype == dtype
    A0, Z0 = init_factors(Y.shape[0], Y.shape[1], 5, seed=1)
    lam = 0.03
    values, internal = [], []
    for k in (1, 2, 3, 4, 6, 9, 12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = bcd(pre, op, A0, Z0, lam=lam, temporal=temporal, spatial=spatial,
                      max_iter=k, tol=1e-14, merge=False)
        values.append(dense_objective(Y, D, F, res.A, res.Z, res.B, lam, temporal, spatial))
        internal.append(res.objective)
    values = np.array(values)
    slack = 1e-10 if dtype == np.float64 else 1e-5
    assert np.all(np.diff(values) <= slack * values[0]), np.diff(values)
    np.testing.assert_allclose(internal, values, rtol=1e-9 if dtype == np.float64 else 1e-4)
    assert values[-1] < 0.9 * values[0]
    assert np.all(np.diff(res.history) <= 0)


def test_history_monotone_with_restarts_and_callback():
    Y, op, D, F, _, temporal = small_problem()
    spatial = CompositeNorm(1.0, 0.5, 0.0)  # no TV: fast, run to tolerance
    pre = precompute(Y, op, F)
    A0, Z0 = init_factors(Y.shape[0], Y.shape[1], 6, seed=2)
    seen = []
    res = bcd(pre, op, A0, Z0, lam=0.03, temporal=temporal, spatial=spatial, max_iter=2000,
              tol=1e-7, callback=lambda i, f: seen.append((i, f)))
    assert np.all(np.diff(res.history) <= 0)
    assert [i for i, _ in seen] == list(range(1, res.n_iter + 1))
    assert res.stop_reason in ("tol", "stalled") and res.converged
    assert seen[-1][1] == pytest.approx(res.history[-1 - (res.n_merged > 0)])


def svt_optimum(Y, lam):
    s = np.linalg.svd(Y, compute_uv=False)
    return 0.5 * np.sum(np.minimum(s, lam) ** 2) + lam * np.sum(np.maximum(s - lam, 0.0))


def test_reaches_svt_optimum_from_random_start():
    """l2/l2 norms, no signs, D = I, no background: nuclear-norm problem, solved by SVT."""
    rng = np.random.default_rng(7)
    T, P = 50, 70
    Y = rng.normal(size=(T, 4)) @ rng.normal(size=(4, P)) + 0.5 * rng.normal(size=(T, P))
    lam = 10.0
    op = IdentityOperator(T)
    norm = CompositeNorm(1.0, 0.0, 0.0, nonnegative=False)
    A0 = rng.normal(size=(T, 10))
    res = bcd(precompute(Y, op), op, A0, np.zeros((P, 10)), lam=lam, temporal=norm,
              spatial=norm, max_iter=5000, tol=1e-12)
    Pstar = svt_optimum(Y, lam)
    F_direct = dense_objective(Y, np.eye(T), np.zeros((T, 0)), res.A, res.Z,
                               np.zeros((P, 0)), lam, norm, norm)
    assert abs(F_direct - Pstar) <= 1e-6 * Pstar
    assert np.linalg.matrix_rank(res.A @ res.Z.T, tol=1e-6) == int(np.sum(np.linalg.svd(Y, compute_uv=False) > lam))


def test_prune_and_merge():
    rng = np.random.default_rng(3)
    T, P = 20, 15
    a, z = rng.random(T), rng.random(P)
    b, w = rng.random(T), rng.random(P)
    A = np.column_stack([a, 2 * a, np.zeros(T), b, 0.5 * a])
    Z = np.column_stack([z, 3 * z, rng.random(P), w, 2 * z])
    An, Zn, keep = prune_zero_columns(A, Z)
    assert keep.tolist() == [True, True, False, True, True]
    np.testing.assert_allclose(An @ Zn.T, A @ Z.T)
    ta, tz = CompositeNorm(1.0, 1.0), CompositeNorm(1.0, 0.5)
    Am, Zm, n = merge_duplicates(An, Zn, ta, tz)
    assert n == 2 and Am.shape == (T, 2)
    np.testing.assert_allclose(Am @ Zm.T, A @ Z.T, rtol=1e-12, atol=1e-12)
    # lossless for the projective norm: the penalty of collinear columns adds up
    pen = lambda A, Z: np.sum(ta.value(A) * tz.value(Z))
    assert pen(Am, Zm) == pytest.approx(pen(An, Zn), rel=1e-12)
    i = int(np.argmax(np.abs(Am.T @ a)))
    assert ta.value(Am[:, [i]])[0] == pytest.approx(tz.value(Zm[:, [i]])[0])  # balanced
    # nearly but not collinear columns are kept apart
    A2 = np.column_stack([a, a + 0.05 * rng.random(T)])
    Z2 = np.column_stack([z, z])
    assert merge_duplicates(A2, Z2, ta, tz)[2] == 0


def test_solver_merges_duplicate_columns():
    Y, op, D, F, _, temporal = small_problem()
    spatial = CompositeNorm(1.0, 0.5, 0.0)
    pre = precompute(Y, op, F)
    A0, Z0 = init_factors(Y.shape[0], Y.shape[1], 3, seed=4)
    A0 = np.column_stack([A0, A0[:, :1]])  # exact duplicate: stays collinear forever
    Z0 = np.zeros((Y.shape[1], 4))
    res = bcd(pre, op, A0, Z0, lam=0.03, temporal=temporal, spatial=spatial, max_iter=1000,
              tol=1e-7)
    assert res.n_merged >= 1 and res.A.shape[1] <= 3
    direct = dense_objective(Y, D, F, res.A, res.Z, res.B, 0.03, temporal, spatial)
    assert direct == pytest.approx(res.objective, rel=1e-9)
    assert np.all(np.diff(res.history) <= 0)


def test_budget_warning_and_no_columns():
    Y, op, D, F, spatial, temporal = small_problem()
    pre = precompute(Y, op, F)
    A0, Z0 = init_factors(Y.shape[0], Y.shape[1], 4, seed=5)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        res = bcd(pre, op, A0, Z0, lam=0.03, temporal=temporal, spatial=spatial, max_iter=2)
    assert res.stop_reason == "max_iter" and not res.converged and res.n_iter == 2
    # lam far above the polar of the data: every column dies at the first step
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = bcd(pre, op, A0, Z0, lam=1e6, temporal=temporal, spatial=spatial, max_iter=50)
    assert res.stop_reason == "no_columns" and res.A.shape == (Y.shape[0], 0)
    # objective = the background-only fit
    assert res.objective == pytest.approx(
        dense_objective(Y, D, F, res.A, res.Z, res.B, 0.0, temporal, spatial), rel=1e-12)
    np.testing.assert_allclose(res.B, Y.T @ F, rtol=1e-10)


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.2, 0.6, 1.0])
def test_data_products_match_dense_float64(fraction):
    # The solver's two products with the (T, P) data matrix: the column gather used for sparse
    # footprints and the transposed product must equal the plain float64 product of the same
    # float32 numbers, whichever path the footprints' sparsity selects.
    rng = np.random.default_rng(7)
    M = rng.standard_normal((517, 803)).astype(np.float32)   # T not a multiple of the row block
    X = rng.random((803, 6))
    X[rng.random(803) >= fraction] = 0.0
    X32 = X.astype(np.float32).astype(np.float64)
    ref = M.astype(np.float64) @ X32
    got = _big_times(M, X)
    assert got.dtype == np.float64 and got.shape == (517, 6)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()))
    A = rng.random((517, 4))
    A[rng.random(517) >= fraction] = 0.0                      # spike trains: few nonzero frames
    refT = M.T.astype(np.float64) @ A.astype(np.float32).astype(np.float64)
    gotT = _big_t_times(M, A)
    assert gotT.dtype == np.float64 and gotT.shape == (803, 4)
    np.testing.assert_allclose(gotT, refT, rtol=0, atol=1e-4 * max(1.0, np.abs(refT).max()))


def test_support_keeps_each_footprint_inside_its_set_and_stays_aligned():
    # Two seeded columns, each restricted to a 3x3 block around one planted cell, plus one
    # column restricted to an empty corner (its footprint must die there, not wander onto a
    # cell): footprints stay in their sets, the objective never increases, and the returned
    # support follows the pruned columns.
    Y, op, D, F, spatial, temporal = small_problem()
    pre = precompute(Y, op, F)
    H = W = 6
    T, P = Y.shape
    yy, xx = np.divmod(np.arange(P), W)

    def box(y0, x0):
        return (np.abs(yy - y0) <= 1) & (np.abs(xx - x0) <= 1)

    support = np.stack([box(1, 1), box(4, 4), box(0, 5) & (yy == 0) & (xx == 5)], axis=1)
    rng = np.random.default_rng(2)
    A0 = rng.random((T, 3))
    Z0 = support * 0.5
    res = bcd(pre, op, A0, Z0, lam=0.05, temporal=temporal, spatial=spatial, max_iter=300,
              tol=1e-10, support=support, merge=False)
    assert res.support is not None and res.support.shape == res.Z.shape
    assert not np.any(res.Z[~res.support])
    assert np.all(np.diff(res.history) <= 1e-10 * abs(res.history[0]))
    # the two cells are found inside their boxes
    for y0, x0 in ((1, 1), (4, 4)):
        hits = [i for i in range(res.Z.shape[1]) if res.support[box(y0, x0), i].all()]
        assert len(hits) == 1 and res.Z[box(y0, x0), hits[0]].max() > 0
    # without the restriction the same start is free to use any pixel
    free = bcd(pre, op, A0, Z0, lam=0.05, temporal=temporal, spatial=spatial, max_iter=300,
               tol=1e-10, merge=False)
    assert free.support is None


def test_support_restricted_products_give_the_full_products_result(monkeypatch):
    # With every footprint restricted, the solver multiplies only the supports' pixels of
    # D^T Y (a pixel-major copy made once per run); the run matches the one that multiplies
    # the whole tile and masks the gradient to the supports.
    import calseg.solver.bcd as bcd_module

    Y, op, D, F, spatial, temporal = small_problem()
    pre = precompute(Y, op, F)
    T, P = Y.shape
    yy, xx = np.divmod(np.arange(P), 6)
    support = np.stack([(np.abs(yy - 1) <= 1) & (np.abs(xx - 1) <= 1),
                        (np.abs(yy - 4) <= 1) & (np.abs(xx - 4) <= 1)], axis=1)
    assert bcd_module._SupportData.maybe(pre.DtY, support) is not None
    A1 = np.ones((T, 2))
    A1[::3, 1] = 0.0                                       # a sparse column: frames skipped
    np.testing.assert_allclose(bcd_module._SupportData.maybe(pre.DtY, support).t_times(A1, support),
                               np.where(support, pre.DtY.T.astype(np.float64) @ A1, 0.0), rtol=1e-6)
    A0 = np.random.default_rng(3).random((T, 2))
    kw = dict(lam=0.05, temporal=temporal, spatial=spatial, max_iter=40, tol=1e-10, support=support,
              merge=False, warn=False)
    fast = bcd(pre, op, A0, support * 0.5, **kw)
    monkeypatch.setattr(bcd_module, "_SUPPORT_FRACTION", 0.0)       # the whole-tile products
    assert bcd_module._SupportData.maybe(pre.DtY, support) is None
    full = bcd(pre, op, A0, support * 0.5, **kw)
    assert fast.n_iter == full.n_iter
    np.testing.assert_allclose(fast.history, full.history, rtol=1e-9)
    np.testing.assert_allclose(fast.Z, full.Z, atol=1e-7 * np.abs(full.Z).max())
    # a column free to use every pixel turns the copy off
    assert bcd_module._SupportData.maybe(pre.DtY, np.column_stack([support, np.ones(P, bool)])) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_major_gather_kernel_matches_numpy(dtype):
    # the support copy's kernel: rows of out = columns of X, in any order, across the kernel's
    # pixel and frame blocks (sizes that are not multiples of them)
    from calseg.model._kernels import gather_columns_t

    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 97)).astype(dtype)
    for cols in (np.arange(97), rng.permutation(97)[:41], np.array([96, 0, 5]), np.zeros(0, int)):
        out = np.full((cols.size, 300), np.nan, dtype)
        gather_columns_t(X, cols.astype(np.int64), out)
        np.testing.assert_array_equal(out, X[:, cols].T)


def test_support_runs_cover_each_column_exactly():
    from calseg.solver.bcd import _support_runs

    rng = np.random.default_rng(2)
    support = rng.random((53, 5)) < 0.4
    support[:, 3] = False                                  # a column without pixels
    support[[0, -1], 0] = True                             # runs touching both ends
    cptr, rstart, rlen, roff = _support_runs(support)
    assert cptr[0] == 0 and cptr[-1] == rstart.size and np.all(np.diff(cptr) >= 0)
    assert np.array_equal(roff, np.concatenate([[0], np.cumsum(rlen)[:-1]]))
    for i in range(support.shape[1]):
        got = np.zeros(53, bool)
        for k in range(cptr[i], cptr[i + 1]):
            assert rlen[k] > 0 and not got[rstart[k]:rstart[k] + rlen[k]].any()
            got[rstart[k]:rstart[k] + rlen[k]] = True
        assert np.array_equal(got, support[:, i])


def test_merged_support_is_the_union_of_the_members():
    Z_old = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    support = np.array([[True, False, False], [True, True, False], [False, True, True]])
    Z_new = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])   # columns 0 and 1 merged
    got = _merged_support(support, Z_old, Z_new)
    np.testing.assert_array_equal(got, [[True, False], [True, False], [True, True]])


@pytest.mark.parametrize("seed", range(5))
def test_per_column_constants_majorize_the_block_hessian(seed):
    """diag(L) - M is PSD for any PSD M; with supports, the quadratic sum_p z_p^T M z_p of
    footprints inside their supports is bounded by sum_i L_i ||z_i||^2 (the Z-step's
    majorization), although diag(L) - M itself need not be PSD then."""
    rng = np.random.default_rng(seed)
    r, P = 6, 40
    G = rng.normal(size=(30, r)) * rng.uniform(0.05, 3.0, r)    # columns of very different size
    M = G.T @ G
    L = _diag_lipschitz(M)
    assert np.linalg.eigvalsh(np.diag(L) - M)[0] >= -1e-9 * np.abs(M).max()
    assert np.all(L >= np.diag(M) * (1 - 1e-12))
    support = rng.random((P, r)) < 0.3
    sf = support.astype(float)
    Ls = _diag_lipschitz(M, (sf.T @ sf) > 0)
    assert np.all(Ls <= L * (1 + 1e-12))
    for _ in range(200):
        Z = rng.normal(size=(P, r)) * support
        quad = np.einsum("pi,ij,pj->", Z, M, Z)
        assert quad <= np.sum(Ls * np.sum(Z ** 2, axis=0)) * (1 + 1e-9) + 1e-12


def test_dim_column_converges_with_the_bright_one():
    """Two planted cells, one 30x dimmer: with a step per column the dim footprint is fitted
    to the same accuracy as the bright one within a small iteration budget."""
    rng = np.random.default_rng(3)
    H = W = 8
    T, P = 200, H * W
    op = IdentityOperator(T)
    Zt = np.zeros((P, 2))
    Zt[[9, 10, 17, 18], 0] = 1.0
    Zt[[45, 46, 53, 54], 1] = 1.0
    At = (rng.random((T, 2)) < 0.2) * np.array([30.0, 1.0])
    Y = At @ Zt.T + 0.01 * rng.normal(size=(T, P))
    norm = CompositeNorm(1.0, 0.1, 0.0, nonnegative=True)
    snorm = CompositeNorm(1.0, 0.1, 0.0, nonnegative=True, image_shape=(H, W))
    res = bcd(precompute(Y, op), op, At + 0.5 * (At > 0), np.full((P, 2), 0.1), lam=0.05,
              temporal=norm, spatial=snorm, max_iter=40, tol=1e-12, warn=False)
    for i in range(2):
        z = res.Z[:, i] / np.linalg.norm(res.Z[:, i])
        assert z @ (Zt[:, i] / 2.0) > 0.999


def test_windowed_prox_equals_whole_image_prox_away_from_the_window_edge():
    # Columns whose supports are small disks: the prox computed on each support's window (plus
    # margin) equals the whole-image prox inside the window when the input is zero outside it,
    # and is zero outside the window; a column without a window is the whole-image prox.
    # Two disks of the same size share one call (same window shape).
    from calseg.prox.composite import CompositeNorm
    from calseg.solver.bcd import _WINDOW_MARGIN as m, _WindowedProx, _support_windows

    h, w = 30, 32
    yy, xx = np.mgrid[0:h, 0:w]
    disks = [(((yy - cy) ** 2 + (xx - cx) ** 2) <= 16).ravel() for cy, cx in ((10, 12), (20, 22))]
    support = np.column_stack([disks[0], np.ones(h * w, bool), disks[1]])
    wins = _support_windows(support, (h, w))
    assert wins == [(6 - m, 15 + m, 8 - m, 17 + m), None, (16 - m, 25 + m, 18 - m, 27 + m)]
    wp = _WindowedProx(CompositeNorm(1.0, 0.5, 0.3, nonnegative=True, image_shape=(h, w)), wins)
    assert wp.groups == {(9 + 2 * m, 9 + 2 * m): [0, 2], None: [1]}
    rng = np.random.default_rng(0)
    V = rng.standard_normal((h * w, 3)) + 1.0
    V[~disks[0], 0] = 0.0
    V[~disks[1], 2] = 0.0
    norm = CompositeNorm(1.0, 0.5, 0.3, nonnegative=True, image_shape=(h, w), tv_tol=1e-8)
    step = np.array([0.7, 0.4, 0.5])
    wp = _WindowedProx(norm, wins)
    got, warm = wp.prox(V, step)
    ref, _ = norm.prox(V, step)
    np.testing.assert_allclose(got[:, 1], ref[:, 1], atol=1e-6)
    for col, (y0, y1, x0, x1) in ((0, wins[0]), (2, wins[2])):
        inside = np.zeros((h, w), bool)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_allclose(got[inside.ravel(), col], ref[inside.ravel(), col], atol=1e-5)
        assert not got[~inside.ravel(), col].any()
    # the warm starts (one per window shape) are accepted on the next call
    again, _ = wp.prox(V, step, warm=warm)
    np.testing.assert_allclose(again, got, atol=1e-5)
