"""Timings of calseg's TV proxes (prints figures; asserts nothing).

* 2-D: 8-connected TV prox of one 512 x 512 image (disc + checkerboard + noise, weight 0.2) for
  each method in the registry, at the certified relative tolerances listed in TOLS, with the
  true relative error against a tighter dykstra solution (tol 1e-4; its own error is far
  smaller, see tests). FISTA stops at ``fista_max_iter`` (reported as not converged).
* 1-D: Condat kernel time per 10^6 samples, and the compiled C package ``condat-tv``
  (``pip install condat-tv``) when importable, with the ratio.

Run: ``python benchmarks/bench_prox.py`` or call :func:`main` from another bench script.
Times are wall-clock best of a few runs after a warm-up call (numba compilation excluded).
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


def main(size=512, weight=0.2, tols=TOLS, methods=None, fista_max_iter=300, repeat=1):
    """Print and return the timings as a dict."""
    from calseg.prox.tv import TV2D_METHODS, prox_tv1d, prox_tv2d

    results = {}
    y = _image(size, size)
    dev = np.linalg.norm(y - y.mean())
    prox_tv2d(y[:64], weight, (8, 8), method="dykstra")  # compile / load caches
    prox_tv2d(y[:64], weight, (8, 8), method="fista")
    ref, _, _ = prox_tv2d(y, weight, (size, size), tol=1e-4, max_iter=5000)
    print(f"2-D TV prox, {size}x{size}, 8-connected, weight {weight} (tol = certified bound on "
          f"||x - x*|| / ||y - mean y||)")
    for method in methods or sorted(TV2D_METHODS):
        for tol in tols:
            max_iter = fista_max_iter if method == "fista" else 5000
            t, (x, _, info) = _best(lambda: prox_tv2d(y, weight, (size, size), method=method, tol=tol,
                                                      max_iter=max_iter), repeat)
            err = np.linalg.norm(x - ref) / dev
            print(f"  {method:8s} tol {tol:.0e}: {t:7.3f} s  {info['n_iter']:5d} iterations  "
                  f"converged {info['converged']}  true rel. error {err:.1e}")
            results[("tv2d", method, tol)] = {"seconds": t, "n_iter": info["n_iter"], "rel_error": err}
    # warm start: the next call on a slightly changed image
    _, state, _ = prox_tv2d(y, weight, (size, size), tol=1e-3)
    y2 = y + 0.01 * np.random.default_rng(1).normal(size=y.shape)
    t, (_, _, info) = _best(lambda: prox_tv2d(y2, weight, (size, size), tol=1e-3, warm=state), repeat)
    print(f"  dykstra  tol 1e-03 warm-started on a 1% perturbed image: {t:7.3f} s  {info['n_iter']} iterations")
    results[("tv2d_warm", "dykstra", 1e-3)] = {"seconds": t, "n_iter": info["n_iter"]}

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
