"""Seconds per solver sweep (Z-step, B-step, A-step) at T = 3000, P = 64 x 64, r = 50.

Seeded random data; calcium-decay operator, spatial norm with TV on (authors' weights), 5
background atoms. Prints the figures; never asserts on time. Run as
``python benchmarks/bench_solver.py`` or call :func:`main`.
"""
from __future__ import annotations

import time
import warnings


def main(T=3000, H=64, W=64, rank=50, n_sweeps=5, seed=0):
    import numpy as np

    from calseg.errors import ConvergenceWarning
    from calseg.model.background import fourier_background
    from calseg.model.objective import precompute
    from calseg.model.temporal import DecayOperator
    from calseg.prox.composite import CompositeNorm
    from calseg.solver.bcd import bcd

    rng = np.random.default_rng(seed)
    P = H * W
    op = DecayOperator.from_tau(T, 0.736, 5.0)
    # planted sparse components + noise, float32 like a movie
    Ztrue = (rng.random((P, rank)) < 0.01).astype(np.float64)
    S = (rng.random((T, rank)) < 0.02) * rng.exponential(1.0, (T, rank))
    Y = (100.0 + op.apply(S) @ Ztrue.T + rng.normal(size=(T, P))).astype(np.float32)
    F = fourier_background(T, 5)
    spatial = CompositeNorm(1.0, 1.0, 0.6, image_shape=(H, W), connectivity=8)
    temporal = CompositeNorm(1.0, 1.0)
    # a small lam and dense positive factors keep all r columns alive, so every timed sweep
    # is a full rank-r sweep
    lam = 1e-3 * float(np.std(Y - Y.mean(axis=0)))
    A0, Z0 = rng.random((T, rank)), rng.random((P, rank))

    t0 = time.perf_counter()
    pre = precompute(Y, op, F)
    _ = op.norm_sq
    t_pre = time.perf_counter() - t0
    # warm-up (numba compilation / caches) with one sweep, then timed sweeps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = bcd(pre, op, A0, Z0, lam=lam, temporal=temporal, spatial=spatial, max_iter=1)
        A, Z = res.A, res.Z
        t0 = time.perf_counter()
        res = bcd(pre, op, A, Z, lam=lam, temporal=temporal, spatial=spatial,
                  max_iter=n_sweeps, tol=1e-300)
        total = time.perf_counter() - t0
    print(f"bench_solver: T={T} P={H}x{W} r={rank} (after 1 warm-up sweep: r={A.shape[1]}) "
          f"float32, decay operator, TV on")
    import os

    threads = {k: os.environ.get(k, "default") for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(f"  threads: {threads} (on a loaded machine threaded BLAS/numba can be ~10x slower)")
    print(f"  precompute (D^T Y', ||D||^2): {t_pre:.3f} s")
    print(f"  {res.n_iter} sweeps in {total:.3f} s: {total / max(res.n_iter, 1):.3f} s per sweep "
          f"(restarts {res.n_restarts}, final r={res.A.shape[1]})")
    return {"precompute_s": t_pre, "sweep_s": total / max(res.n_iter, 1), "n_sweeps": res.n_iter}


if __name__ == "__main__":
    main()
