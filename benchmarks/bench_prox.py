"""Timings of calseg's TV proxes (prints figures; asserts nothing).

* 2-D: 8-connected TV prox of one 512 x 512 image (disc + checkerboard + noise, weight 0.2) for
  each method in the registry, at the certified relative tolerances listed in TOLS, with the
  true relative error against a tighter dykstra solution (tol 1e-4; its own error is far
  smaller, see tests). The numpy FISTA reference stops at ``fista_max_iter`` (reported as not
  converged); the other methods get 20000 iterations.
* Warm start: the same prox on a 1% perturbed image, started from the previous state.
* Solver case: what the factorization solver asks for (``CompositeNorm.prox`` ->
  ``prox_tv2d``): 72 x 72 images, 5 and 60 columns, small weights (~3% of the pixel spread),
  tol 1e-2, a sequence of 20 warm-started calls on inputs that change by ~1% per call.
* Certificate: the dual FISTA of ``calseg.certify.dualnorm`` (numba kernel vs the numpy
  version), 72 x 72 images, 10 and 60 columns, float32, 50 steps.
* 1-D: Condat kernel time per 10^6 samples, and the compiled C package ``condat-tv``
  (``pip install condat-tv``) when importable, with the ratio.

Run: ``python benchmarks/bench_prox.py`` or call :func:`main` from another bench script.
Times are wall-clock best of a few runs after a warm-up call (numba compilation excluded); on a
shared machine print ``uptime`` next to them.
"""
from __future__ import annotations

import time

import numpy as np

TOLS = (1e-2, 1e-3)


def _best(fn, repeat=3):
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _image(H=512, W=512, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    img = ((yy - 200) ** 2 + (xx - 300) ** 2 < 80 ** 2) * 1.0 + ((yy // 64 + xx // 64) % 2) * 0.5
    return (img + 0.3 * rng.normal(size=(H, W))).ravel()


def _solver_sequence(r, n_calls=20, H=72, W=72, seed=0):
    """Columns like the solver's Z-step inputs: sparse blobs on a small noisy background, the
    weights ~3% of the pixel spread, each call ~1% away from the previous one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    base = np.empty((H * W, r))
    for j in range(r):
        cy, cx, rad = rng.uniform(8, H - 8), rng.uniform(8, W - 8), rng.uniform(4, 8)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad ** 2))
        base[:, j] = (blob + 0.05 * rng.normal(size=(H, W))).ravel()
    weights = 0.03 * base.std(axis=0) * rng.uniform(0.5, 1.5, size=r)
    seq = [base]
    for _ in range(n_calls - 1):
        seq.append(seq[-1] + 0.01 * base.std(axis=0) * rng.normal(size=base.shape))
    return seq, weights


def _solver_case(method, seq, weights, shape, tol=1e-2, max_iter=500):
    from calseg.prox.tv import prox_tv2d

    state = None
    steps = []
    for Y in seq:
        _, state, info = prox_tv2d(Y, weights, shape, method=method, tol=tol, max_iter=max_iter,
                                   warm=state)
        steps.append(info["n_iter"])
    return steps


def main(size=512, weight=0.2, tols=TOLS, methods=None, fista_max_iter=300, repeat=1):
    """Print and return the timings as a dict."""
    from calseg.prox.tv import TV2D_METHODS, prox_tv1d, prox_tv2d

    results = {}
    methods = list(methods or TV2D_METHODS)
    y = _image(size, size)
    dev = np.linalg.norm(y - y.mean())
    for method in methods:                                   # compile / load caches
        prox_tv2d(y[:64], weight, (8, 8), method=method)
    ref, _, _ = prox_tv2d(y, weight, (size, size), method="dykstra", tol=1e-4, max_iter=5000)
    print(f"2-D TV prox, {size}x{size}, 8-connected, weight {weight} (tol = certified bound on "
          f"||x - x*|| / ||y - mean y||; true error vs dykstra at tol 1e-4)")
    for method in methods:
        for tol in tols:
            max_iter = fista_max_iter if method == "fista" else 20000
            t, (x, _, info) = _best(lambda: prox_tv2d(y, weight, (size, size), method=method, tol=tol,
                                                      max_iter=max_iter), repeat)
            err = np.linalg.norm(x - ref) / dev
            print(f"  {method:8s} tol {tol:.0e}: {t:7.3f} s  {info['n_iter']:5d} iterations  "
                  f"converged {info['converged']}  true rel. error {err:.1e}")
            results[("tv2d", method, tol)] = {"seconds": t, "n_iter": info["n_iter"], "rel_error": err}
    # warm start: the next call on a slightly changed image
    y2 = y + 0.01 * np.random.default_rng(1).normal(size=y.shape)
    for method in [m for m in methods if m != "fista"]:
        _, state, _ = prox_tv2d(y, weight, (size, size), method=method, tol=1e-3)
        t, (_, _, info) = _best(lambda: prox_tv2d(y2, weight, (size, size), method=method, tol=1e-3,
                                                  warm=state), repeat)
        print(f"  {method:8s} tol 1e-03 warm-started on a 1% perturbed image: {t:7.3f} s  "
              f"{info['n_iter']} iterations")
        results[("tv2d_warm", method, 1e-3)] = {"seconds": t, "n_iter": info["n_iter"]}

    print("solver case: 72x72, 8-connected, tol 1e-2, 20 warm-started calls (inputs change ~1%)")
    for r in (5, 60):
        seq, w = _solver_sequence(r)
        for method in [m for m in methods if m != "fista"]:
            _solver_case(method, seq[:2], w, (72, 72))
            t, steps = _best(lambda: _solver_case(method, seq, w, (72, 72)), max(repeat, 2))
            print(f"  {r:2d} columns {method:8s}: {t:7.3f} s  ({t / len(seq) * 1e3:.1f} ms per call, "
                  f"iterations per call median {int(np.median(steps))}, max {max(steps)})")
            results[("solver_case", method, r)] = {"seconds": t, "n_iter": steps}

    from calseg.certify.dualnorm import _edge_shape, _tv_dual_fista, _tv_dual_fista_numpy

    print("certificate dual FISTA: 72x72, 8-connected, float32, 50 steps")
    rng = np.random.default_rng(3)
    for m in (10, 60):
        V3 = rng.normal(size=(72, 72, m)).astype(np.float32)
        scale = rng.uniform(0.2, 1.0, size=m)
        p = [np.zeros(_edge_shape(k, 72, 72) + (m,), np.float32) for k in range(4)]
        _tv_dual_fista(V3, p, scale, 2, 8)
        t_nb, _ = _best(lambda: _tv_dual_fista(V3, p, scale, 50, 8), 3)
        t_np, _ = _best(lambda: _tv_dual_fista_numpy(V3, p, scale, 50, 8), 3)
        print(f"  {m:2d} columns: numba {t_nb * 1e3:.1f} ms  numpy {t_np * 1e3:.1f} ms  "
              f"ratio {t_np / t_nb:.1f}")
        results[("dual_fista", m)] = {"numba": t_nb, "numpy": t_np}

    rng = np.random.default_rng(2)
    s = np.cumsum(rng.normal(size=10 ** 6)) * 0.05 + rng.normal(size=10 ** 6)
    prox_tv1d(s[:100], 1.0)
    t_nb, x_nb = _best(lambda: prox_tv1d(s, 1.0), 5)
    line = f"1-D TV (Condat), 10^6 samples: calseg {t_nb * 1e3:.1f} ms"
    results["tv1d_calseg"] = t_nb
    try:
        import condat_tv
    except ImportError:
        line += "  (condat-tv not installed: no C reference)"
    else:
        t_c, x_c = _best(lambda: condat_tv.tv_denoise(s, 1.0), 5)
        line += (f"  condat-tv (C) {t_c * 1e3:.1f} ms  ratio {t_nb / t_c:.2f}"
                 f"  max |diff| {np.abs(x_nb - x_c).max():.1e}")
        results["tv1d_condat_tv"] = t_c
    print(line)
    return results


if __name__ == "__main__":
    main()
