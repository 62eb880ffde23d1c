"""``factorize``: the structured low-rank factorization of one (T, P) movie block.

    min_{A, Z, B}  1/2 ||Y - D A Z^T - F B^T||_F^2 + lam * sum_i ||A_i||_A ||Z_i||_Z

solved by block prox-linear descent (:mod:`calseg.solver.bcd`), followed by the optimality
certificate of :mod:`calseg.certify.gap` and rank growth with its improving atom (METHOD 5.6).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calseg.errors import ConfigError, InputError

__all__ = ["Factorization", "factorize"]



@dataclass(frozen=True)
class Factorization:
    """Result of :func:`factorize`.

    Attributes
    ----------
    A : ndarray of shape (T, r), float64
        Temporal coefficients (deconvolved spike-like trains); the calcium trace of component i
        is ``operator.apply(A[:, i])``.
    Z : ndarray of shape (P, r), float64
        Spatial footprints (columns are images flattened in C order).
    B : ndarray of shape (P, k), float64
        Background coefficients.
    F : ndarray of shape (T, k), float64
        Background atoms (orthonormal columns); the background is ``F @ B.T``.
    objective : float
        Final objective value.
    history : ndarray of shape (n,)
        Objective of every accepted iterate, over all growth rounds (nonincreasing).
    n_iter : int
        Solver iterations over all rounds.
    converged : bool
        The last solver run met its tolerance (or stalled at working precision).
    stop_reason : str
        The last solver run's stop reason: "tol", "stalled", "max_iter" or "no_columns".
    certificate : Certificate or None
        The last optimality certificate (None when ``certify=False``).
    lam : float
    n_grow : int
        Columns added by rank growth.
    operator : object
        The temporal operator D (``apply``/``adjoint``).
    settings : dict
        The settings of the call (everything except the data and callbacks).
    support : ndarray of bool, shape (P, r), or None
        The pixels each column's footprint was restricted to (``support=``; None: all).
    """

    A: np.ndarray
    Z: np.ndarray
    B: np.ndarray
    F: np.ndarray
    objective: float
    history: np.ndarray
    n_iter: int
    converged: bool
    stop_reason: str
    certificate: Any
    lam: float
    n_grow: int
    operator: Any = field(repr=False)
    settings: dict = field(repr=False)
    support: Any = field(default=None, repr=False)

    @property
    def rank(self):
        """Number of components r."""
        return self.A.shape[1]


# --------------------------------------------------------------------------- validation
class _Constraint:
    def __init__(self, check, allowed):
        self.check = check
        self.allowed = allowed


def _real(lo=None, hi=None, *, lo_open=False, optional=False):
    def check(v):
        if v is None:
            return optional
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi
    bound = ("> " if lo_open else ">= ") + f"{lo}" if lo is not None else "finite"
    if hi is not None:
        bound += f" and <= {hi}"
    return _Constraint(check, f"a real number {bound}" + (" or None" if optional else ""))


def _integer(lo, *, optional=False):
    def check(v):
        if v is None:
            return optional
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= lo
    return _Constraint(check, f"an integer >= {lo}" + (" or None" if optional else ""))


def _one_of(*options):
    return _Constraint(lambda v: any(v is o or (not isinstance(v, (bool, np.ndarray)) and v == o)
                                     for o in options),
                       "one of " + ", ".join(repr(o) for o in options))


def _weights(n):
    def check(v):
        try:
            vals = tuple(v)
        except TypeError:
            return False
        return (len(vals) == n
                and all(isinstance(x, numbers.Real) and not isinstance(x, bool)
                        and math.isfinite(x) and x >= 0 for x in vals)
                and (vals[0] > 0 or vals[1] > 0))
    names = "(l2, l1, tv)" if n == 3 else "(l2, l1)"
    return _Constraint(check, f"{n} finite weights {names} >= 0 with l2 > 0 or l1 > 0 "
                              "(without either the column norm is not a norm)")


def _boolean():
    return _Constraint(lambda v: isinstance(v, (bool, np.bool_)), "True or False")


def _init():
    def check(v):
        if v is None or (isinstance(v, str) and v in ("random", "impulse")):
            return True
        return isinstance(v, (tuple, list)) and len(v) == 2
    return _Constraint(check, "None, 'random', 'impulse' or a pair (A0, Z0)")


def _callable_or_none():
    return _Constraint(lambda v: v is None or callable(v), "a callable or None")


#: Parameter constraints of :func:`factorize`, checked once at the entry.
CONSTRAINTS = {
    "lam": _real(0.0, lo_open=True),
    "spatial": _weights(3),
    "temporal": _weights(2),
    "nonnegative": _boolean(),
    "operator": _Constraint(
        lambda v: (isinstance(v, str) and v in ("decay", "identity"))
        or all(hasattr(v, a) for a in ("apply", "adjoint", "norm_sq")),
        "'decay', 'identity' or an operator object (apply/adjoint/norm_sq)"),
    "background": _Constraint(lambda v: v is None or (isinstance(v, np.ndarray) and v.ndim == 2),
                              "None or an array F of shape (T, k) with orthonormal columns"),
    "certificate_tol": _real(0.0, lo_open=True),
    "tv_tol": _real(0.0, lo_open=True),
    "certificate_effort": _one_of("low", "normal", "high"),
    "grow_margin": _real(0.0),
    "grow_min_rho": _real(0.0),
    "grow_min_support": _integer(1),
    "grow_reach": _real(0.0, lo_open=True, optional=True),
    "tau": _real(0.0, lo_open=True, optional=True),
    "fps": _real(0.0, lo_open=True, optional=True),
    "rise": _real(0.0, lo_open=True, optional=True),
    "n_background": _integer(0),
    "rank": _integer(1, optional=True),
    "init": _init(),
    "connectivity": _one_of(4, 8),
    "max_iter": _integer(1),
    "tol": _real(0.0, lo_open=True),
    "certify": _boolean(),
    "grow_rank": _boolean(),
    "max_grow": _integer(0),
    "seed": _integer(0),
    "callback": _callable_or_none(),
}


def _validate(params):
    for name, constraint in CONSTRAINTS.items():
        value = params[name]
        if not constraint.check(value):
            shown = value if not isinstance(value, np.ndarray) else f"array of shape {value.shape}"
            raise ConfigError(f"{name} must be {constraint.allowed}, got {shown!r}")


def _as_data(Y):
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise InputError(f"Y must be a 2-D array of shape (T, P) (frames x pixels), got shape {Y.shape}")
    if Y.dtype.kind not in "fiu":
        raise InputError(f"Y must be a real numeric array, got dtype {Y.dtype}")
    if Y.dtype not in (np.float32, np.float64):
        Y = Y.astype(np.float32)
    if Y.shape[0] < 2 or Y.shape[1] < 1:
        raise InputError(f"Y must have at least 2 frames and 1 pixel, got shape {Y.shape}")
    if not np.all(np.isfinite(Y)):
        raise InputError("Y must be finite (it contains NaN or inf)")
    return Y


def _grown_support(psi, image_shape, reach):
    """The pixels a grown column may use: within ``reach`` of the centroid of the atom's
    pixels at or above a fifth of its peak, plus every pixel of the atom (all without reach)."""
    psi = np.abs(np.asarray(psi, dtype=np.float64)).reshape(-1)
    if reach is None or not np.any(psi > 0):
        return np.ones(psi.size, dtype=bool)
    from calseg.seeds import seed_support

    yy, xx = np.divmod(np.arange(psi.size), image_shape[1])
    wts = np.where(psi >= 0.2 * psi.max(), psi, 0.0)
    centroid = (float(wts @ yy) / wts.sum(), float(wts @ xx) / wts.sum())
    return seed_support([centroid], image_shape, reach)[:, 0] | (psi > 0)


# --------------------------------------------------------------------------- entry point
def factorize(Y, image_shape, *, lam, spatial=(1.0, 1.0, 0.6), temporal=(1.0, 1.0),
              nonnegative=True, operator="decay", tau=None, fps=None, rise=None,
              n_background=5, rank=None, init=None, connectivity=8, max_iter=500, tol=1e-6,
              certify=True, grow_rank=True, max_grow=10, seed=0, callback=None,
              background=None, certificate_tol=1e-3, tv_tol=1e-2, certificate_effort="low",
              grow_margin=0.05, grow_min_rho=0.0, grow_min_support=1, support=None,
              grow_reach=None):
    """Factor a movie block as ``Y ~ D A Z^T + F B^T`` with structured column norms.

    Parameters
    ----------
    Y : ndarray of shape (T, P)
        Movie block, rows are frames, columns pixels (C order). float32 stays float32 (the
        solver keeps one float32 (T, P) matrix, ``D^T Y``); float64 is used throughout for
        float64 input; integer input is converted to float32.
    image_shape : (int, int)
        (H, W) with ``H * W == P``.
    lam : float
        Regularization weight lambda > 0.
    spatial : (float, float, float)
        Weights (alpha, beta, gamma) of ``||z||_Z = alpha ||z||_2 + beta ||z||_1 + gamma TV(z)``.
    temporal : (float, float)
        Weights (alpha', beta') of ``||a||_A = alpha' ||a||_2 + beta' ||a||_1``.
    nonnegative : bool
        Constrain A >= 0 and Z >= 0.
    operator : {"decay", "identity"} or operator object
        Temporal operator D: the unit-column calcium-decay dictionary (needs ``tau`` and
        ``fps``; ``rise`` optional), the identity, or a ready operator with ``apply``,
        ``adjoint``, ``norm_sq`` and ``n_frames == T`` (e.g. a
        :class:`~calseg.model.temporal.DecayOperator`; then tau/fps/rise are ignored).
    tau, fps, rise : float or None
        Decay time (s), frame rate (Hz), rise time (s).
    n_background : int
        Number k of slow Fourier background atoms (0: no background term).
    background : ndarray of shape (T, k) or None
        An explicit background dictionary with orthonormal columns (e.g. Fourier atoms plus
        neuropil traces); overrides ``n_background``.
    rank : int or None
        Initial number of columns; None: ``min(50, T, P)``. Ignored when ``init`` is a pair.
    init : None, "random", "impulse" or (A0, Z0)
        Start point: see :func:`calseg.solver.init.init_factors`, or given factors of shapes
        (T, r) and (P, r). None means the authors' "impulse" start (r impulses evenly spaced
        in time; "random" when r > T), which found every planted neuron in the recovery test
        where sparse random columns lost the weakest one. Z is updated first.
    connectivity : {4, 8}
        Pixel graph of the spatial TV.
    max_iter : int
        Iteration budget of each solver run.
    tol : float
        Relative objective decrease (over 5 accepted iterations) at which a solver run stops.
    certify : bool
        Compute the optimality certificate (:func:`calseg.certify.gap.certify`).
    grow_rank : bool
        When the certificate's polar search finds an atom with ``rho > lam (1 + grow_margin)``,
        append it (exact line search) and resume the solver (needs ``certify``).
    max_grow : int
        Maximum number of growth rounds.
    certificate_tol : float
        Relative gap at or below which the certificate's status is "certified".
    tv_tol : float
        Accuracy of the footprint TV prox inside the solver (relative distance to the exact
        prox, warm-started between iterations). An inexact prox only changes the path: accepted
        iterates still never increase the objective, and the certificate is computed exactly.
    certificate_effort : {"low", "normal", "high"}
        Effort of the certificate's polar bounds (see :func:`calseg.certify.gap.certify`).
    grow_margin : float
        Grow only when the improving atom's rho exceeds ``lam * (1 + grow_margin)``: at an
        inexactly converged stationary point the active atoms themselves sit at rho ~ lam.
    grow_min_rho : float
        Grow only when the atom's rho also exceeds this (e.g. the polar of pure noise, so that
        a lam below the noise level never grows noise atoms).
    grow_min_support : int
        Grow only atoms whose spatial factor has at least this many pixels at or above a fifth
        of its peak (e.g. the smallest reportable cell: single-pixel atoms of a poorly fitted
        edge would take a growth round and be dropped as too small anyway).
    seed : int
        Seed of the random start and of the certificate's randomized search.
    support : ndarray of bool, shape (P, r), optional
        With ``init=(A0, Z0)``: the pixels each initial column's footprint may use (e.g. a disk
        around its seed, so that a seed's column cannot drift onto a distant, larger signal).
        Columns added by rank growth use the disk of ``grow_reach`` around their atom
        (unrestricted without it). The certificate is that of the
        unrestricted problem.
    grow_reach : float or None
        With ``support``: a column added by rank growth may use the pixels within this radius
        of the centroid of its atom's footprint (and the atom's own pixels), as a seed's
        column may use its disk: it cannot drift onto a broader signal, and the solver's
        products stay on the supports' pixels. None: the whole image.
    callback : callable or None
        ``callback(iteration, objective)`` after every solver iteration.

    Returns
    -------
    Factorization

    Raises
    ------
    ConfigError
        A parameter is outside what it allows (the message names it).
    InputError
        Y or the initial factors have the wrong shape or values.

    Notes
    -----
    The objective is ``1/2 ||Y - D A Z^T - F B^T||_F^2 + lam sum_i ||A_i||_A ||Z_i||_Z`` with
    the sign constraints as indicators; B is unpenalized. Its convex counterpart penalizes
    ``X = A Z^T`` by the projective tensor norm of (||.||_A, ||.||_Z); a zero column at a local
    minimum, or a certificate with ``rho_up <= lam``, proves global optimality (METHOD 2, 5).
    Growth loop (METHOD 5.6): run the solver until it stalls, certify, and while the polar
    search returns an improving atom, append it and resume.
    """
    params = dict(lam=lam, spatial=spatial, temporal=temporal, nonnegative=nonnegative,
                  operator=operator, tau=tau, fps=fps, rise=rise, n_background=n_background,
                  rank=rank, init=init, connectivity=connectivity, max_iter=max_iter, tol=tol,
                  certify=certify, grow_rank=grow_rank, max_grow=max_grow, seed=seed,
                  callback=callback, background=background, certificate_tol=certificate_tol,
                  tv_tol=tv_tol, certificate_effort=certificate_effort, grow_margin=grow_margin,
                  grow_min_rho=grow_min_rho, grow_min_support=grow_min_support,
                  grow_reach=grow_reach)
    _validate(params)
    Y = _as_data(Y)     # checked finite here, once (the certificate's steps do not repeat it)
    T, P = Y.shape
    try:
        H, W = (int(v) for v in image_shape)
        shape_ok = len(tuple(image_shape)) == 2 and H >= 1 and W >= 1 and H * W == P
    except (TypeError, ValueError):
        shape_ok = False
    if not shape_ok:
        raise ConfigError(
            f"image_shape must be (H, W) with H * W = P = {P} (pixels of Y), got {image_shape!r}")
    if isinstance(operator, str) and operator == "decay":
        for name, value in (("tau", tau), ("fps", fps)):
            if value is None:
                raise ConfigError(f"{name} is required when operator='decay' (got None); "
                                  "give the decay time tau (s) and frame rate fps (Hz), "
                                  "or use operator='identity'")
        if rise is not None and abs(rise - tau) <= 1e-9 * tau:
            raise ConfigError(f"rise must differ from tau, got rise={rise!r}, tau={tau!r}")

    from calseg.model.background import fourier_background
    from calseg.model.objective import precompute
    from calseg.model.temporal import DecayOperator, IdentityOperator
    from calseg.prox.composite import CompositeNorm
    from calseg.solver.bcd import bcd
    from calseg.solver.init import init_factors

    if not isinstance(operator, str):
        if getattr(operator, "n_frames", T) != T:
            raise ConfigError(f"operator has {operator.n_frames} frames, Y has {T}")
        op = operator
    else:
        op = (DecayOperator.from_tau(T, tau, fps, rise=rise) if operator == "decay"
              else IdentityOperator(T))
    if background is not None:
        F = np.asarray(background, dtype=np.float64)
        if F.shape[0] != T:
            raise ConfigError(f"background must have T = {T} rows, got shape {F.shape}")
        if F.shape[1] and not np.allclose(F.T @ F, np.eye(F.shape[1]), atol=1e-6):
            raise ConfigError("background must have orthonormal columns (use numpy.linalg.qr)")
    else:
        F = fourier_background(T, int(n_background))
    spatial_norm = CompositeNorm(*map(float, spatial), nonnegative=bool(nonnegative),
                                 image_shape=(H, W), connectivity=int(connectivity),
                                 tv_tol=float(tv_tol))
    temporal_norm = CompositeNorm(float(temporal[0]), float(temporal[1]), 0.0,
                                  nonnegative=bool(nonnegative))

    if isinstance(init, (tuple, list)):
        A0, Z0 = (np.asarray(x, dtype=np.float64) for x in init)
        if A0.ndim != 2 or Z0.ndim != 2 or A0.shape[0] != T or Z0.shape[0] != P \
                or A0.shape[1] != Z0.shape[1]:
            raise InputError(f"init must be (A0, Z0) of shapes (T={T}, r) and (P={P}, r), "
                             f"got {A0.shape} and {Z0.shape}")
        if not (np.all(np.isfinite(A0)) and np.all(np.isfinite(Z0))):
            raise InputError("init factors must be finite")
    else:
        r = int(rank) if rank is not None else min(50, T, P)
        method = init if init is not None else ("impulse" if r <= T else "random")
        A0, Z0 = init_factors(T, P, r, method=method, seed=int(seed))

    if support is not None:
        support = np.asarray(support, dtype=bool)
        if support.shape != Z0.shape:
            raise InputError(f"support must have the initial footprints' shape {Z0.shape}, "
                             f"got {support.shape}")
    pre = precompute(Y, op, F if F.shape[1] else None)
    solve = dict(lam=float(lam), temporal=temporal_norm, spatial=spatial_norm,
                 max_iter=int(max_iter), tol=float(tol), callback=callback)
    res = bcd(pre, op, A0, Z0, support=support, **solve)
    support = res.support
    history = [res.history]
    n_iter = res.n_iter
    A, Z, B = res.A, res.Z, res.B
    certificate = None
    n_grow = 0
    bg = F if F.shape[1] else None
    last_search = None           # growth's search at the final (A, Z), when it found nothing to add
    last_W = None                # and the residual correlation it searched (reused by certify)
    if certify and grow_rank:
        # METHOD 5.6: while the polar search finds an atom clearly above lam, append it with the
        # exact line-search step and resume the solver. Only the (cheap) lower-bound search runs
        # between rounds; the full certificate is computed once, at the end, and reuses the
        # last search when it ran at the final point.
        from calseg.certify.gap import append_atom, improving_atom

        while n_grow < max_grow:
            atom, W_res = improving_atom(Y, op, A, Z, lam=float(lam), temporal=temporal_norm,
                                         spatial=spatial_norm, background=bg,
                                         effort=certificate_effort, seed=int(seed) + n_grow,
                                         pre=pre, return_data=True, check_finite=False)
            if atom is None or not atom.rho > max(lam * (1.0 + grow_margin), grow_min_rho):
                last_search, last_W = atom, W_res
                break
            if np.count_nonzero(atom.psi >= 0.2 * np.max(np.abs(atom.psi))) < grow_min_support:
                last_search, last_W = atom, W_res
                break
            del W_res
            try:
                A, Z = append_atom(Y, op, A, Z, atom, lam=float(lam), background=bg,
                                   check_finite=False)
            except InputError:  # the atom no longer decreases the objective
                break
            if support is not None:
                support = np.column_stack([support, _grown_support(atom.psi, (H, W), grow_reach)])
            n_grow += 1
            res = bcd(pre, op, A, Z, support=support, **solve)
            support = res.support
            history.append(res.history)
            n_iter += res.n_iter
            A, Z, B = res.A, res.Z, res.B
    if certify:
        from calseg.certify.gap import certify as certify_fn

        certificate, _ = certify_fn(Y, op, A, Z, lam=float(lam), temporal=temporal_norm,
                                    spatial=spatial_norm, background=bg, tol=float(certificate_tol),
                                    effort=certificate_effort, seed=int(seed), pre=pre,
                                    lower=last_search, data=last_W, check_finite=False)
        del last_W

    settings = {k: v for k, v in params.items() if k not in ("callback", "init", "background")}
    if not isinstance(operator, str):
        settings["operator"] = repr(operator)
    settings["init"] = "given" if isinstance(init, (tuple, list)) else method
    settings["image_shape"] = (H, W)
    settings["rank"] = int(A0.shape[1])
    return Factorization(A=A, Z=Z, B=B, F=F, objective=float(res.objective),
                         history=np.concatenate(history), n_iter=n_iter,
                         converged=res.converged, stop_reason=res.stop_reason,
                         certificate=certificate, lam=float(lam), n_grow=n_grow,
                         operator=op, settings=settings, support=support)
