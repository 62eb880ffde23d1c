"""The composite norm of calseg's factors and its exact proximal operator.

``h(x) = l2 ||x||_2 + l1 ||x||_1 + tv TV_G(x)  (+ indicator of x >= 0 when nonnegative)``

with ``TV_G`` the anisotropic graph TV on the 4- or 8-connected pixel grid. Its prox is the
composition (METHOD.md section 4.1; Yu, "On decomposing the proximal map", NIPS 2013)

``prox_{s h}(y) = S2_{s l2}( S1_{s l1}^{(+)}( prox_{s tv TV}(y) ) )``

first TV, then (one-sided when nonnegative) soft thresholding, then ℓ2 group shrinkage.
"""
from __future__ import annotations

import numpy as np

from calseg.errors import ConfigError
from calseg.prox.norms import (
    as_columns,
    column_weights,
    group_l2_shrink,
    soft_threshold,
    tv_value,
    validate_image_shape,
)

__all__ = ["CompositeNorm"]


class CompositeNorm:
    """h(x) = l2*||x||_2 + l1*||x||_1 + tv*TV_G(x) (+ indicator of x >= 0 when nonnegative).

    Applied column-wise. TV_G is the anisotropic graph TV ``sum_{(i,j) in E} |x_i - x_j|`` on the
    4- or 8-connected grid of ``image_shape`` (H, W) with pixels flattened in C order (diagonals
    not down-weighted); ``tv`` must be 0 when ``image_shape`` is None (1-D vectors).

    Parameters
    ----------
    l2, l1, tv : float
        Nonnegative weights.
    nonnegative : bool
        Add the indicator of the nonnegative orthant (one-sided soft thresholding).
    image_shape : (int, int) or None
    connectivity : {4, 8}
    tv_method : str
        2-D TV prox solver, one of :data:`calseg.prox.tv.TV2D_METHODS` (default ``"fista_nb"``,
        the fastest on the solver's warm-started tiles), see :func:`calseg.prox.tv.prox_tv2d`.
    tv_tol : float
        Relative accuracy of the TV prox, certified by its duality gap:
        ``||x - x*|| <= tv_tol * ||y - mean(y)||`` per column (see :mod:`calseg.prox.tv`;
        values below ~1e-7 are capped by float64 rounding of the gap).
    tv_max_iter : int or None
        Iteration budget of the TV prox (None: the method's own default budget).

    Notes
    -----
    The prox composition is exact for any nonnegative (l2, l1, tv) because soft thresholding
    applies one nondecreasing map to every coordinate (keeps the order of any pair, so the TV
    subdifferential condition holds) and the ℓ2 shrink is a nonnegative rescaling (every term
    before it is positively homogeneous). A per-pixel ℓ1 weight or a non-homogeneous term would
    break it.
    """

    def __init__(self, l2=1.0, l1=0.0, tv=0.0, *, nonnegative=True, image_shape=None,
                 connectivity=8, tv_method="fista_nb", tv_tol=1e-6, tv_max_iter=None):
        from calseg.prox.tv import TV2D_METHODS

        for name, v in (("l2", l2), ("l1", l1), ("tv", tv)):
            if not (isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {connectivity!r}")
        if image_shape is None:
            if tv != 0:
                raise ConfigError(f"tv must be 0 when image_shape is None (1-D vectors), got tv={tv!r}")
        else:
            image_shape = validate_image_shape(image_shape, connectivity=connectivity)
        if tv_method not in TV2D_METHODS:
            raise ConfigError(f"tv_method must be one of {sorted(TV2D_METHODS)}, got {tv_method!r}")
        if not (isinstance(tv_tol, (int, float, np.floating)) and np.isfinite(tv_tol) and tv_tol > 0):
            raise ConfigError(f"tv_tol must be a finite number > 0, got {tv_tol!r}")
        if tv_max_iter is not None and not (isinstance(tv_max_iter, (int, np.integer)) and tv_max_iter >= 1):
            raise ConfigError(f"tv_max_iter must be an integer >= 1, got {tv_max_iter!r}")
        self.l2 = float(l2)
        self.l1 = float(l1)
        self.tv = float(tv)
        self.nonnegative = bool(nonnegative)
        self.image_shape = image_shape
        self.connectivity = int(connectivity)
        self.tv_method = tv_method
        self.tv_tol = float(tv_tol)
        self.tv_max_iter = None if tv_max_iter is None else int(tv_max_iter)
        self.last_tv_info = None

    def __repr__(self):
        return (f"CompositeNorm(l2={self.l2}, l1={self.l1}, tv={self.tv}, nonnegative={self.nonnegative}, "
                f"image_shape={self.image_shape}, connectivity={self.connectivity})")

    def value(self, X):
        """The norm of each column (the nonnegativity indicator is not included).

        Parameters
        ----------
        X : ndarray of shape (n,) or (n, r)

        Returns
        -------
        ndarray of shape (r,), float64 (shape (1,) for a 1-D input).
        """
        X2, _ = as_columns(X)
        X64 = X2.astype(np.float64)
        v = np.zeros(X2.shape[1])
        if self.l2:
            v += self.l2 * np.sqrt((X64 * X64).sum(axis=0))
        if self.l1:
            v += self.l1 * np.abs(X64).sum(axis=0)
        if self.tv:
            v += self.tv * tv_value(X64, self.image_shape, self.connectivity)
        return v

    def prox(self, X, step, *, warm=None):
        """Column-wise prox: column i -> ``prox_{step_i h}(X[:, i])``.

        Parameters
        ----------
        X : ndarray of shape (n,) or (n, r)
        step : float or ndarray of shape (r,), >= 0
        warm : object or None
            The state returned by a previous call (TV dual); ignored when it does not fit.

        Returns
        -------
        Y : ndarray, same shape and dtype as X
        warm_state : object or None
            Opaque TV state for the next call (None when there is no TV term).

        Notes
        -----
        The TV solver's diagnostics of the last call are kept in ``self.last_tv_info``.
        """
        X2, was_1d = as_columns(X)
        n, r = X2.shape
        s = column_weights(step, r, "step")
        if self.image_shape is not None:
            validate_image_shape(self.image_shape, n, self.connectivity)
        state = None
        Y = X2
        if self.tv > 0:
            from calseg.prox.tv import prox_tv2d

            Y, state, info = prox_tv2d(Y, self.tv * s, self.image_shape,
                                       connectivity=self.connectivity, method=self.tv_method,
                                       tol=self.tv_tol, max_iter=self.tv_max_iter, warm=warm)
            self.last_tv_info = info
        if self.nonnegative or self.l1 > 0:
            Y = soft_threshold(Y, self.l1 * s, nonnegative=self.nonnegative)
        if self.l2 > 0:
            Y = group_l2_shrink(Y, self.l2 * s)
        if Y is X2:
            Y = X2.copy()
        Y = Y.astype(X2.dtype, copy=False)
        return (Y[:, 0] if was_1d else Y), state
