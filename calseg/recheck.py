"""``calseg certify``: recompute a result's certificate from its saved factors and the movie alone.

The run saved, in ``factors.npz``, each tile's window and final factors (A, Z) together with the
model they belong to (λ, norm weights, decay time, background atoms, per-pixel noise). This
module reads the movie tile by tile, rebuilds the same convex problem, and computes the
certificate afresh with :func:`calseg.certify.gap.certify` — none of the run's own certificate
numbers are reused — then compares them with ``certificate.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .patches import Tile


def load_factors(result_dir: Path) -> tuple[dict, list, dict]:
    path = Path(result_dir) / "factors.npz"
    if not path.is_file():
        raise InputError(f"{result_dir}: no factors.npz (not a calseg run folder, or written by an older calseg)")
    try:
        data = np.load(path, allow_pickle=False)
        model = json.loads(str(data["model_json"]))
        tiles = [Tile(*map(int, row)) for row in data["tiles"]]
        arrays = {k: data[k] for k in data.files if k not in ("model_json", "tiles")}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    return model, tiles, arrays


def recertify(result_dir, movie, *, rtol: float = 1e-2, progress=None) -> dict:
    """Recompute every tile's certificate and compare it with the saved one.

    Returns a dict with the recomputed overall certificate, one entry per tile (saved vs
    recomputed objective and gap) and ``agrees``: True when every recomputed objective matches
    the saved one to ``rtol`` and every recomputed status equals the saved status.
    """
    from .certify.gap import certify
    from .prox.composite import CompositeNorm
    from .tile import background_dictionary, read_tile
    from .model.temporal import DecayOperator

    result_dir = Path(result_dir)
    model, tiles, arrays = load_factors(result_dir)
    try:
        saved = json.loads((result_dir / "certificate.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{result_dir}: cannot read certificate.json ({exc})") from None
    noise = arrays["noise"]
    T = movie.shape[0]
    if movie.shape[1:] != noise.shape:
        raise InputError(f"{result_dir}: was computed on a {noise.shape[0]}x{noise.shape[1]} recording, "
                         f"the movie given is {movie.shape[1]}x{movie.shape[2]}")
    if arrays["neuropil"].shape[0] != T:
        raise InputError(f"{result_dir}: was computed on {arrays['neuropil'].shape[0]} frames, "
                         f"the movie given has {T}")
    op = DecayOperator.from_tau(T, model["tau"], model["fps"], rise=model["rise"])
    F = background_dictionary(T, model["n_background"], arrays["neuropil"].astype(np.float64))
    temporal = CompositeNorm(*model["temporal"], nonnegative=True)
    saved_tiles = {t.get("tile"): t for t in saved.get("tiles", [])}
    rows = []
    for k, tile in enumerate(tiles):
        Yn, _, _ = read_tile(movie, tile, noise)
        spatial = CompositeNorm(*model["spatial"], nonnegative=True, image_shape=tile.shape,
                                connectivity=model["connectivity"])
        A = arrays[f"A_{tile.index}"].astype(np.float64)
        Z = arrays[f"Z_{tile.index}"].astype(np.float64)
        cert, _ = certify(Yn, op, A, Z, lam=model["lam"], temporal=temporal, spatial=spatial,
                          background=F, tol=model["certificate_tol"])
        c = cert.to_dict()
        s = saved_tiles.get(tile.index, {})
        ok_obj = "objective" in s and abs(c["objective"] - s["objective"]) <= rtol * max(abs(s["objective"]), 1e-12)
        ok_status = s.get("status") == c["status"]
        rows.append({"tile": tile.index, "saved_objective": s.get("objective"), "objective": c["objective"],
                     "saved_gap": s.get("gap"), "gap": c["gap"], "saved_status": s.get("status"),
                     "status": c["status"], "relative_gap": c["relative_gap"],
                     "rho_low_over_lam": c["rho_low"] / c["lam"], "rho_up_over_lam": c["rho_up"] / c["lam"],
                     "agrees": bool(ok_obj and ok_status)})
        if progress:
            progress("certify", k + 1, len(tiles))
    obj = sum(r["objective"] for r in rows)
    gap = sum(r["gap"] for r in rows)
    status = "certified" if rows and all(r["status"] == "certified" for r in rows) else "bounded"
    return {"status": status, "objective": obj, "gap": gap, "relative_gap": gap / obj if obj > 0 else 0.0,
            "saved_status": saved.get("status"), "saved_relative_gap": saved.get("relative_gap"),
            "agrees": all(r["agrees"] for r in rows), "tiles": rows}
