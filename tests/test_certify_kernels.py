"""The certificate's bisection kernel against its numpy twin (the loop it replaced)."""
import numpy as np
import pytest

from calseg.certify._kernels import bisect_fq_serial


def _shrink(U, thr, nonneg):
    if nonneg:
        return np.maximum(U - thr, 0.0)
    return np.sign(U) * np.maximum(np.abs(U) - thr, 0.0)


def bisect_fq_twin(V, D, r, lft, a, b, nonneg, tol, stop, prune):
    """Numpy twin of ``bisect_fq_serial`` on columns of V, D (n, m); returns (r, lft, good)."""
    def F(mu, Va, Da):
        Z = _shrink(Va - mu * Da, mu * b, nonneg)
        return np.sqrt(np.einsum("ij,ij->j", Z, Z)) - a * mu

    r, lft = r.copy(), lft.copy()
    m = r.size
    done = np.zeros(m, bool)
    if prune:
        at = np.flatnonzero((lft < stop) & (stop < r))
        ok = F(np.full(at.size, stop), V[:, at], D[:, at]) <= 0
        r[at[ok]] = stop                                 # the stop itself is an upper end
        lft[at[~ok]] = stop
        done[at[ok]] = True
    good = done.copy()
    rest = np.flatnonzero(~done)
    good[rest] = F(r[rest], V[:, rest], D[:, rest]) <= 0
    busy = rest[good[rest]]
    if prune:
        busy = busy[r[busy] > stop]                      # already at or below the stop
    for _ in range(64):
        settled = r[busy] - lft[busy] <= 0.05 * tol * r[busy]
        busy = busy[~settled]
        if busy.size == 0:
            break
        mid = 0.5 * (lft[busy] + r[busy])
        right = F(mid, V[:, busy], D[:, busy]) <= 0
        r[busy[right]] = mid[right]
        lft[busy[~right]] = mid[~right]
    return r, lft, good


@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("prune", [False, True])
def test_bisect_fq_matches_twin(nonneg, prune):
    rng = np.random.default_rng(7)
    n, m = 50, 12
    V = rng.standard_normal((n, m))
    D = 0.3 * rng.standard_normal((n, m))
    a, b, tol = 1.0, 0.5, 1e-3
    hi = np.linalg.norm(np.abs(V), axis=0) / a * 1.5       # generous upper ends
    hi[3] = 1e-3                                           # a column whose end is not valid
    lo = np.full(m, 0.0)
    stop = float(np.median(hi)) if prune else -1.0
    r, lft, good = hi.copy(), lo.copy(), np.empty(m, np.bool_)
    bisect_fq_serial(np.ascontiguousarray(V.T), np.ascontiguousarray(D.T), r, lft, a, b, nonneg,
                     tol, stop, prune, good)
    r2, l2, g2 = bisect_fq_twin(V, D, hi, lo, a, b, nonneg, tol, stop, prune)
    np.testing.assert_array_equal(good, g2)
    assert not good[3] or (prune and r[3] == stop)
    np.testing.assert_allclose(r, r2, rtol=1e-12)
    np.testing.assert_allclose(lft, l2, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# the per-round kernels of _dual_tv_cert against their numpy twin (_dual_tv_cert_numpy)


def _tv_case(seed, shape, m, conn, nonneg):
    from calseg.prox.composite import CompositeNorm

    rng = np.random.default_rng(seed)
    norm = CompositeNorm(1.0, 0.7, 0.5, nonnegative=nonneg, image_shape=shape, connectivity=conn)
    V = rng.normal(size=(shape[0] * shape[1], m)) + 0.3
    V[:, 0] = -np.abs(V[:, 0]) if nonneg else V[:, 0]        # a column with h° = 0 under >= 0
    return V, norm


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("shape,m", [((9, 11), 70), ((5, 4), 7), ((1, 6), 3), ((6, 1), 40)])
def test_dual_tv_cert_kernels_match_numpy_twin(conn, nonneg, prune, shape, m):
    """Fused kernel (blocks of images in parallel) and numpy twin (one image at a time around
    the one-image FISTA kernel). float64 inner solver: same brackets, maximisers and running
    best to 1e-9, round for round. float32: the two compiled FISTA loops may associate float32
    sums differently and a round can end differently, so each bracket must contain the other's
    lower end and the best values agree to the tolerance."""
    from calseg.certify.dualnorm import _dual_tv_cert, _dual_tv_cert_numpy

    V, norm = _tv_case(11 + conn + m, shape, m, conn, nonneg)
    for tol in (1e-3, 1e-8):
        kw = dict(tol=tol, prune=prune, max_iter=300, inner0=10, floor=0.2 if prune else None)
        lo, hi, X, best = _dual_tv_cert(V, norm, **kw)
        lo2, hi2, X2, best2 = _dual_tv_cert_numpy(V, norm, **kw)
        if tol < 1e-5:
            np.testing.assert_allclose(lo, lo2, rtol=1e-9, atol=1e-14)
            np.testing.assert_allclose(hi, hi2, rtol=1e-9, atol=1e-14)
            np.testing.assert_allclose(X, X2, rtol=1e-7, atol=1e-9)
            assert best == pytest.approx(best2, rel=1e-12)
        else:
            assert np.all(lo <= hi2 * (1 + 1e-9) + 1e-14) and np.all(lo2 <= hi * (1 + 1e-9) + 1e-14)
            assert best == pytest.approx(best2, rel=2 * tol)
            if not prune:
                np.testing.assert_allclose(hi, hi2, rtol=2 * tol, atol=1e-14)
        assert np.all(lo <= hi * (1 + 1e-12))
        np.testing.assert_allclose(np.einsum("ij,ij->j", V, X), lo, rtol=1e-10, atol=1e-14)
        h = norm.value(X)
        np.testing.assert_allclose(h[lo > 0], 1.0, rtol=1e-10)     # feasible maximisers
        if nonneg:
            assert np.all(X >= 0)


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("nonneg", [True, False])
def test_dual_tv_cert_kernel_brackets_contain_reference(conn, nonneg):
    """lo <= h°(v) <= hi against the independent prox-based dual norm (METHOD 5.1); under
    pruning the largest hi still bounds the largest dual norm."""
    from calseg.certify.dualnorm import _dual_tv_cert, dual_norm
    from calseg.prox.composite import CompositeNorm

    V, norm = _tv_case(3 + conn, (4, 5), 40, conn, nonneg)
    ref_norm = CompositeNorm(1.0, 0.7, 0.5, nonnegative=nonneg, image_shape=(4, 5),
                             connectivity=conn, tv_method="fista", tv_tol=1e-10,
                             tv_max_iter=5000)
    ref, _ = dual_norm(V, ref_norm, tol=1e-9, method="prox")
    slack = 1e-6 * np.maximum(ref, 1e-12)
    for tol in (1e-3, 1e-6):
        lo, hi, _, _ = _dual_tv_cert(V, norm, tol=tol, max_iter=2000, inner0=10)
        assert np.all(hi >= ref - slack) and np.all(lo <= ref + slack)
        assert np.all(hi - lo <= tol * hi + 1e-14)
        lo, hi, _, best = _dual_tv_cert(V, norm, tol=tol, prune=True, max_iter=2000, inner0=10)
        assert np.all(lo <= ref + slack)
        assert hi.max() >= ref.max() - slack.max()
        assert hi.max() <= ref.max() * (1 + 2 * tol) + 1e-14


def test_single_pixel_rows_kernel_matches_numpy():
    from calseg.certify._kernels import single_pixel_rows
    from calseg.certify.dualnorm import _single_pixel_atoms, degrees

    for nonneg in (True, False):
        V, norm = _tv_case(5, (6, 7), 9, 8, nonneg)
        V[:, 1] = 0.0
        lo2, X2 = _single_pixel_atoms(V, norm)
        lo, XT = np.empty(9), np.zeros((9, 42))
        cost = 1.0 + 0.7 + 0.5 * degrees((6, 7), 8)
        single_pixel_rows(np.ascontiguousarray(V.T), cost, nonneg, lo, XT)
        np.testing.assert_allclose(lo, lo2, rtol=1e-15)     # fastmath: w / c as w * (1 / c)
        np.testing.assert_allclose(XT.T, X2, rtol=1e-15)


def test_cert_columns_same_result_for_any_thread_count():
    """Blocks of images run in parallel with the floor of the earlier blocks: the brackets do
    not depend on how many threads run them."""
    import numba

    from calseg.certify.dualnorm import _dual_tv_cert

    V, norm = _tv_case(7, (9, 11), 100, 8, True)
    kw = dict(tol=1e-3, prune=True, floor=0.2, max_iter=300, inner0=4)
    n0 = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _dual_tv_cert(V, norm, **kw)
        numba.set_num_threads(max(n0, 1))
        many = _dual_tv_cert(V, norm, **kw)
    finally:
        numba.set_num_threads(n0)
    for x, y in zip(one[:3], many[:3]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("absolute", [False, True])
def test_largest_line_norm_matches_numpy(absolute):
    from calseg.certify.polar import _largest_line_norm

    rng = np.random.default_rng(4)
    for shape in ((37, 23), (1, 5), (5, 1)):
        W = rng.normal(size=shape).astype(np.float32)
        for t in (0.0, 0.7):
            M = np.maximum((np.abs(W) if absolute else W).astype(np.float64) - t, 0.0)
            want = np.sqrt(max((M * M).sum(axis=0).max(), (M * M).sum(axis=1).max()))
            assert _largest_line_norm(W, t, absolute) == pytest.approx(want, rel=1e-12)
            assert _largest_line_norm(W, t, absolute) <= np.linalg.norm(M, 2) * (1 + 1e-12)


def test_warm_started_rows_bracket_the_reference_and_ignore_thread_count():
    """Rows in time order, each warm-started from the one before (cert_rows_warm): every
    bracket is valid against the prox-based dual norm, the largest upper end bounds the
    largest dual norm within the tolerance, and the result does not depend on the threads."""
    import numba

    from calseg.certify.dualnorm import _dual_tv_cert_rows, dual_norm
    from calseg.prox.composite import CompositeNorm

    rng = np.random.default_rng(9)
    shape, m = (6, 7), 150
    base = rng.normal(size=shape[0] * shape[1])
    V = np.empty((m, base.size))
    for k in range(m):                                  # an AR(1) sequence of images
        base = 0.9 * base + np.sqrt(1 - 0.81) * rng.normal(size=base.size)
        V[k] = base + 0.2
    norm = CompositeNorm(1.0, 0.7, 0.5, nonnegative=True, image_shape=shape, connectivity=8)
    ref_norm = CompositeNorm(1.0, 0.7, 0.5, nonnegative=True, image_shape=shape, connectivity=8,
                             tv_method="fista", tv_tol=1e-10, tv_max_iter=5000)
    ref, _ = dual_norm(V.T, ref_norm, tol=1e-9, method="prox")
    slack = 1e-6 * np.maximum(ref, 1e-12)
    tol = 1e-3
    n0 = numba.get_num_threads()
    out = []
    try:
        for threads in (1, max(n0, 1)):
            numba.set_num_threads(threads)
            out.append(_dual_tv_cert_rows(V, norm, tol=tol, prune=True, floor=0.0,
                                          max_iter=2000, inner0=2, warm=True))
    finally:
        numba.set_num_threads(n0)
    lo, hi, XT, best = out[0]
    for x, y in zip(out[0][:3], out[1][:3]):
        np.testing.assert_array_equal(x, y)
    assert np.all(lo <= ref + slack) and np.all(lo <= hi * (1 + 1e-12))
    assert hi.max() >= ref.max() - slack.max()
    assert hi.max() <= ref.max() * (1 + 2 * tol) + 1e-14
    h = norm.value(XT.T)
    np.testing.assert_allclose(h[lo > 0], 1.0, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nonneg", [True, False])
def test_rows_no_tv_matches_the_numpy_closed_forms(dtype, nonneg):
    """The row kernel of the TV row bound against its numpy twins (the no-TV dual norm by
    sorting every entry, the single-pixel atoms), on rows of mixed scale, an all-negative
    row, a zero row and tied maxima."""
    from calseg.certify._kernels import rows_no_tv
    from calseg.certify.dualnorm import _dual_no_tv, degrees, single_pixel_lower
    from calseg.prox.composite import CompositeNorm

    rng = np.random.default_rng(11)
    H, Wd, n = 9, 11, 60
    for a, b, c in [(1.0, 1.0, 0.6), (0.2, 1.7, 0.3), (1.9, 0.1, 1.0)]:
        norm = CompositeNorm(a, b, c, nonnegative=nonneg, image_shape=(H, Wd))
        W = rng.normal(size=(n, H * Wd)) * rng.uniform(0.01, 10, (n, 1))
        W[0] = -np.abs(W[0])
        W[1] = 0.0
        W[2, :5] = 3.0
        W = W.astype(dtype)
        cost = a + b + c * degrees((H, Wd), 8)
        for sg in (1.0, -1.0):
            ub, lo = np.empty(n), np.empty(n)
            rows_no_tv(W, sg, a, b, nonneg, cost, ub, lo)
            V = sg * W.T.astype(np.float64)
            np.testing.assert_allclose(ub, _dual_no_tv(V, a, b, nonneg, want_x=False)[0],
                                       rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(lo, single_pixel_lower(V, norm), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("sign,nonneg", [(1.0, True), (-1.0, True), (1.0, False)])
def test_line_pos_stats_equal_numpy(sign, nonneg):
    # row and column sums of squares and maxima of (sign W)+ (|W| when signed), float32 W
    from calseg.certify._kernels import line_pos_stats

    W = np.random.default_rng(5).standard_normal((37, 23)).astype(np.float32)
    W[:, 4] = -abs(W[:, 4])                       # a column with no positive entry
    V = np.abs(W.astype(np.float64)) if not nonneg else np.maximum(sign * W.astype(np.float64), 0)
    rss, rmx = np.empty(37), np.empty(37)
    css, cmx = np.zeros((3, 23)), np.zeros((3, 23))
    line_pos_stats(W, sign, nonneg, rss, rmx, css, cmx)
    np.testing.assert_allclose(rss, (V ** 2).sum(1), rtol=1e-12)
    np.testing.assert_array_equal(rmx, V.max(1))
    np.testing.assert_allclose(css.sum(0), (V ** 2).sum(0), rtol=1e-12)
    np.testing.assert_array_equal(cmx.max(0), V.max(0))
