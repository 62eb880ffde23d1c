"""The certificate's bisection kernel against its numpy twin (the loop it replaced)."""
import numpy as np
import pytest

from calseg.certify._kernels import bisect_fq, bisect_fq_serial


def _shrink(U, thr, nonneg):
    if nonneg:
        return np.maximum(U - thr, 0.0)
    return np.sign(U) * np.maximum(np.abs(U) - thr, 0.0)


def bisect_fq_twin(V, D, r, lft, a, b, nonneg, tol, floor, prune):
    """Numpy twin of ``bisect_fq`` on columns of V, D (n, m); returns (r, lft, good)."""
    def F(mu, Va, Da):
        Z = _shrink(Va - mu * Da, mu * b, nonneg)
        return np.sqrt(np.einsum("ij,ij->j", Z, Z)) - a * mu

    r, lft = r.copy(), lft.copy()
    good = F(r, V, D) <= 0
    busy = np.flatnonzero(good)
    for _ in range(64):
        settled = r[busy] - lft[busy] <= 0.05 * tol * r[busy]
        if prune:
            settled |= r[busy] <= floor * (1 + tol)
        busy = busy[~settled]
        if busy.size == 0:
            break
        mid = 0.5 * (lft[busy] + r[busy])
        right = F(mid, V[:, busy], D[:, busy]) <= 0
        r[busy[right]] = mid[right]
        lft[busy[~right]] = mid[~right]
    return r, lft, good


@pytest.mark.parametrize("kernel", [bisect_fq, bisect_fq_serial])
@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("prune", [False, True])
def test_bisect_fq_matches_twin(nonneg, prune, kernel):
    rng = np.random.default_rng(7)
    n, m = 50, 12
    V = rng.standard_normal((n, m))
    D = 0.3 * rng.standard_normal((n, m))
    a, b, tol = 1.0, 0.5, 1e-3
    hi = np.linalg.norm(np.abs(V), axis=0) / a * 1.5       # generous upper ends
    hi[3] = 1e-3                                           # a column whose end is not valid
    lo = np.full(m, 0.0)
    floor = float(np.median(hi)) if prune else -1.0
    r, lft, good = hi.copy(), lo.copy(), np.empty(m, np.bool_)
    kernel(np.ascontiguousarray(V.T), np.ascontiguousarray(D.T), r, lft, a, b, nonneg, tol,
              floor, prune, good)
    r2, l2, g2 = bisect_fq_twin(V, D, hi, lo, a, b, nonneg, tol, floor, prune)
    np.testing.assert_array_equal(good, g2)
    assert not good[3]
    np.testing.assert_allclose(r, r2, rtol=1e-12)
    np.testing.assert_allclose(lft, l2, rtol=1e-12)
