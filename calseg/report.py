"""What people look at first: ``summary.png`` and a self-contained ``report.html`` per result.

``summary.png`` shows, on one page:

* the mean image and the local-correlation image with every neuron's contour (from
  ``masks.tif``) and id — ids are drawn in order of score and skipped where they would overlap
  an id already drawn, with a font sized to the cells, so a 500-neuron field stays legible;
* the footprints of the strongest neurons (by score), each cropped around its centre;
* their ΔF/F traces, each with its inferred spikes as stems beneath it;
* the certificate (status, relative gap, ρ_low/λ, ρ_up/λ, tiles certified) and the run facts
  (shape, frame rate, τ, λ, neurons, wall time, memory).

``report.html`` embeds the PNG (base64) and adds tables of run facts, the certificate and its
per-tile entries, stage timings and settings. Only the result folder is read (see
:mod:`calseg.export.folder`); matplotlib (the ``report`` extra) is imported inside
:func:`write_report` and always with the Agg backend.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = ["write_report", "render_summary", "run_facts", "certificate_facts"]

#: Neurons whose footprints (grid) and traces are drawn, strongest first.
N_FOOTPRINTS = 20
N_TRACES = 10

_STATUS_COLOURS = {"certified": "#1a9641", "bounded": "#e08214", "not computed": "#777777"}


# --------------------------------------------------------------------------- facts
def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def _bytes(n) -> str:
    if not n:
        return "—"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover


def _seconds(s) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def run_facts(rd) -> list:
    """(label, text) pairs describing a run, from ``run.json`` and the tables.

    Parameters
    ----------
    rd : calseg.export.folder.ResultDir

    Returns
    -------
    list of (str, str)
    """
    run = rd.run
    res = run.get("resolved") or {}
    settings = run.get("settings") or {}
    shape = run.get("shape") or [rd.n_frames, *rd.shape]
    T = int(shape[0])
    fps = rd.fps
    facts = [("shape (T, H, W)", f"{shape[0]} × {shape[1]} × {shape[2]}")]
    if fps:
        facts.append(("frame rate", f"{fps:.4g} Hz ({_seconds(T / fps)} recorded)"))
    else:
        facts.append(("frame rate", "unknown"))
    tau = res.get("tau_s")
    if tau is not None:
        src = res.get("tau_source")
        facts.append(("decay τ", f"{tau:.3g} s" + (f" ({src})" if src else "")))
    if settings.get("indicator"):
        facts.append(("indicator", str(settings["indicator"])))
    if res.get("cell_diameter_px") is not None:
        facts.append(("cell diameter", f"{res['cell_diameter_px']:.3g} px"))
    if res.get("lam") is not None:
        facts.append(("λ", f"{res['lam']:.3g} noise SD"))
    facts.append(("neurons", f"{rd.n_neurons}"))
    if res.get("n_tiles") is not None:
        facts.append(("tiles", f"{res['n_tiles']} of {res.get('tile_size', '?')} px "
                               f"(overlap {res.get('tile_overlap', '?')})"))
    timings = run.get("timings_s") or {}
    wall = run.get("wall_seconds")
    if wall is None and timings:
        wall = float(sum(v for v in timings.values() if isinstance(v, (int, float))))
    facts.append(("wall time", _seconds(wall)))
    if res.get("workers"):
        facts.append(("workers", str(res["workers"])))
    facts.append(("peak memory", _bytes(run.get("peak_rss_bytes"))))
    paths = (run.get("input") or {}).get("paths") or []
    if paths:
        name = Path(paths[0]).name + (f" (+{len(paths) - 1} files)" if len(paths) > 1 else "")
        facts.append(("input", name))
    if run.get("calseg_version"):
        facts.append(("calseg", str(run["calseg_version"])))
    return facts


def certificate_facts(cert: dict) -> list:
    """(label, text) pairs summarising ``certificate.json``."""
    if not cert:
        return [("status", "no certificate.json")]
    status = str(cert.get("status", "unknown"))
    out = [("status", status)]
    if cert.get("relative_gap") is not None:
        tol = cert.get("tol")
        out.append(("relative gap", _fmt(float(cert["relative_gap"]), 3)
                    + (f" (tol {_fmt(float(tol), 2)})" if tol is not None else "")))
    if cert.get("gap") is not None:
        out.append(("gap / objective", f"{_fmt(float(cert['gap']), 3)} / {_fmt(float(cert.get('objective', float('nan'))), 5)}"))
    if cert.get("max_rho_low_over_lam") is not None:
        out.append(("max ρ_low / λ", _fmt(float(cert["max_rho_low_over_lam"]), 4)))
    if cert.get("max_rho_up_over_lam") is not None:
        out.append(("max ρ_up / λ", _fmt(float(cert["max_rho_up_over_lam"]), 4)))
    if cert.get("n_tiles") is not None:
        out.append(("tiles certified", f"{cert.get('n_certified', 0)} of {cert['n_tiles']}"))
    if cert.get("lam") is not None:
        out.append(("λ (tile units)", _fmt(float(cert["lam"]), 4)))
    return out


# --------------------------------------------------------------------------- drawing helpers
def _colours(n: int) -> np.ndarray:
    """n distinct, bright RGB colours (golden-angle hues), deterministic."""
    import matplotlib.colors as mcolors

    h = (np.arange(n) * 0.618033988749895) % 1.0
    s = np.full(n, 0.7)
    v = np.full(n, 1.0)
    return mcolors.hsv_to_rgb(np.column_stack([h, s, v])) if n else np.zeros((0, 3))


def _stretch(img, lo=1.0, hi=99.5):
    img = np.asarray(img, np.float64)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros_like(img)
    a, b = np.percentile(finite, [lo, hi])
    if b <= a:
        b = a + 1.0
    return np.clip((img - a) / (b - a), 0, 1)


def _label_font(rd, axes_width_in: float) -> float:
    """Font size (pt) that fits a neuron id inside a typical neuron at the panel's scale."""
    H, W = rd.shape
    areas = [float(r.get("area") or 0) for r in rd.neurons]
    diam = 2 * math.sqrt(np.median(areas) / math.pi) if areas and np.median(areas) > 0 else 10.0
    pt_per_px = axes_width_in * 72.0 / max(W, H)
    ndig = max(1, len(str(int(rd.ids.max())))) if rd.n_neurons else 1
    return float(np.clip(diam * pt_per_px / (0.62 * ndig + 0.4), 3.0, 9.0))


def _choose_labels(rd, order, fontsize, pt_per_px) -> list:
    """Indices of the neurons whose ids are drawn: in ``order`` (strongest first), skipping any
    whose label box would overlap a label already chosen."""
    digit_w = 0.62 * fontsize / pt_per_px       # width of one digit in image pixels
    h = 0.5 * fontsize / pt_per_px + 0.3
    cell = max(4.0, 4 * h)
    grid: dict = {}
    chosen = []
    for k in order:
        r = rd.neurons[k]
        cy, cx = r.get("centroid_y"), r.get("centroid_x")
        if not isinstance(cy, (int, float)) or not isinstance(cx, (int, float)):
            continue
        w = digit_w * len(str(int(rd.ids[k]))) / 2.0 + 0.3
        box = (cx - w, cx + w, cy - h, cy + h)
        gx0, gx1 = int(box[0] // cell), int(box[1] // cell)
        gy0, gy1 = int(box[2] // cell), int(box[3] // cell)
        near = [b for gx in range(gx0 - 1, gx1 + 2) for gy in range(gy0 - 1, gy1 + 2)
                for b in grid.get((gx, gy), ())]
        if any(box[0] < b[1] and b[0] < box[1] and box[2] < b[3] and b[2] < box[3] for b in near):
            continue
        for gx in range(gx0, gx1 + 1):
            for gy in range(gy0, gy1 + 1):
                grid.setdefault((gx, gy), []).append(box)
        chosen.append(k)
    return chosen


def _label_paths(rd, chosen, fontsize, pt_per_px) -> list:
    """Each chosen id as a glyph outline in image (data) coordinates, centred on the centroid.

    Drawing all ids as two path collections (black halo, then coloured glyphs) is ~20x faster
    than one text artist with a stroke effect per neuron."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.path import Path as MPath
    from matplotlib.textpath import TextPath

    prop = FontProperties(family="DejaVu Sans", weight="bold")
    scale = 1.0 / pt_per_px
    out = []
    for k in chosen:
        tp = TextPath((0, 0), str(int(rd.ids[k])), size=fontsize, prop=prop)
        v = tp.vertices.copy()
        if not len(v):
            continue
        x0, x1 = v[:, 0].min(), v[:, 0].max()
        y0, y1 = v[:, 1].min(), v[:, 1].max()
        r = rd.neurons[k]
        v[:, 0] = (v[:, 0] - (x0 + x1) / 2) * scale + r["centroid_x"]
        v[:, 1] = -(v[:, 1] - (y0 + y1) / 2) * scale + r["centroid_y"]   # image rows grow downwards
        out.append(MPath(v, tp.codes))
    return out


def _image_panel(ax, img, title, rd, outlines, colours, labels, fontsize, cmap="gray"):
    from matplotlib.collections import LineCollection, PathCollection

    H, W = rd.shape
    if img is None:
        ax.set_facecolor("#222222")
        ax.text(0.5, 0.5, "image not available", color="w", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.imshow(_stretch(img), cmap=cmap, interpolation="nearest", extent=(0, W, H, 0), vmin=0, vmax=1)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    segs, cols = [], []
    for k, pieces in enumerate(outlines):
        for p in pieces:
            segs.append(np.vstack([p, p[:1]]))
            cols.append(colours[k])
    if segs:
        lw = float(np.clip(60.0 / math.sqrt(max(len(segs), 1)), 0.5, 1.2))
        ax.add_collection(LineCollection(segs, colors=cols, linewidths=lw, alpha=0.9))
    chosen, paths = labels
    if paths:
        halo = max(0.8, fontsize / 3.5)
        ax.add_collection(PathCollection(paths, facecolors="black", edgecolors="black", linewidths=halo,
                                         offsets=None, transform=ax.transData))
        light = [0.45 * colours[k] + 0.55 for k in chosen]   # pale version of the contour's colour
        ax.add_collection(PathCollection(paths, facecolors=light, edgecolors="none",
                                         transform=ax.transData))
    n = rd.n_neurons
    drawn = len(chosen)
    ids_txt = "" if n == 0 else (" — all ids" if drawn == n else
                                 f" — ids of {drawn} of {n} (strongest first; the others would overlap)")
    ax.set_title(f"{title}: {n} neuron{'s' if n != 1 else ''}{ids_txt}", fontsize=10, loc="left")
    ax.set_xticks([])
    ax.set_yticks([])
    return drawn


def _footprint_grid(ax, rd, top, colours, outlines, diameter):
    """The strongest neurons' footprints as one mosaic image: 5 per row, each cropped around its
    centre and scaled to its own maximum, with its contour and id."""
    from matplotlib.collections import LineCollection

    H, W = rd.shape
    n = len(top)
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_visible(False)
    if n == 0:
        ax.text(0.5, 0.5, "no neurons", ha="center", va="center", fontsize=12, transform=ax.transAxes)
        return
    ncols = 5
    nrows = int(math.ceil(n / ncols))
    side = int(min(max(8, math.ceil(3.2 * diameter)), H, W))
    gap = max(2, side // 10)
    head = max(3, side // 5)                      # room for the id above each crop
    cw, ch = side + gap, side + gap + head
    mosaic = np.full((nrows * ch, ncols * cw), np.nan, np.float32)
    segs, cols = [], []
    for j, (k, page) in enumerate(zip(top, rd.iter_footprints(top))):
        r = rd.neurons[k]
        cy = r.get("centroid_y") if isinstance(r.get("centroid_y"), (int, float)) else H / 2
        cx = r.get("centroid_x") if isinstance(r.get("centroid_x"), (int, float)) else W / 2
        y0 = int(np.clip(round(cy) - side // 2, 0, H - side))
        x0 = int(np.clip(round(cx) - side // 2, 0, W - side))
        crop = page[y0:y0 + side, x0:x0 + side]
        vmax = float(crop.max()) if crop.max() > 0 else 1.0
        oy, ox = (j // ncols) * ch + head, (j % ncols) * cw
        mosaic[oy:oy + side, ox:ox + side] = crop / vmax
        for p in outlines[k]:
            q = np.vstack([p, p[:1]]) - [x0, y0]
            q = np.clip(q, 0, side) + [ox, oy]
            segs.append(q)
            cols.append(colours[k])
        snr = r.get("snr")
        snr_txt = f"  snr {snr:.2g}" if isinstance(snr, (int, float)) else ""
        ax.text(ox, oy - 0.5, f"#{int(rd.ids[k])}{snr_txt}", fontsize=7, va="bottom", ha="left",
                color=colours[k] * 0.7)
    import matplotlib

    cmap = matplotlib.colormaps["inferno"].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
              extent=(0, mosaic.shape[1], mosaic.shape[0], 0))
    ax.add_collection(LineCollection(segs, colors=cols, linewidths=0.8))
    ax.set_xlim(0, mosaic.shape[1])
    ax.set_ylim(mosaic.shape[0], 0)
    ax.set_title(f"footprints of the {n} strongest neurons (by score), each scaled to its maximum, "
                 "with its mask", fontsize=10, loc="left")


def _traces_panel(ax, rd, top, colours):
    T = rd.traces.shape[0]
    t = rd.times if rd.times.size and np.isfinite(rd.times).all() else np.arange(T, dtype=float)
    unit = "s" if rd.times.size and np.isfinite(rd.times).all() else "frames"
    if not top or T == 0:
        ax.axis("off")
        ax.text(0.5, 0.5, "no traces", ha="center", va="center", fontsize=12, transform=ax.transAxes)
        return
    row = 1.0
    trace_h, spike_h, gap = 0.62, 0.22, 0.16
    yticks, ylabels = [], []
    for j, k in enumerate(top):
        base = -(j * row)
        tr = rd.traces[:, k].astype(np.float64)
        sp = rd.spikes[:, k].astype(np.float64)
        lo = float(np.nanmin(tr)) if np.isfinite(tr).any() else 0.0
        hi = float(np.nanmax(tr)) if np.isfinite(tr).any() else 1.0
        span = hi - lo if hi > lo else 1.0
        y_tr = base + spike_h + gap / 2 + trace_h * (tr - lo) / span
        ax.plot(t, y_tr, color=colours[k], lw=0.7)
        smax = float(np.nanmax(sp)) if np.isfinite(sp).any() and np.nanmax(sp) > 0 else 0.0
        if smax > 0:
            idx = np.nonzero(sp > 0.02 * smax)[0]
            if idx.size:
                ax.vlines(t[idx], base + gap / 2, base + gap / 2 + spike_h * sp[idx] / smax,
                          color="k", lw=0.6)
        yticks.append(base + spike_h + gap / 2 + trace_h / 2)
        ylabels.append(f"#{int(rd.ids[k])}\n≤{hi:.2g}")
    ax.set_yticks(yticks)
    ax.set_yticklabels(ylabels, fontsize=7)
    for lab, k in zip(ax.get_yticklabels(), top):
        lab.set_color(colours[k] * 0.75)
    ax.set_xlim(t[0], t[-1] if t[-1] > t[0] else t[0] + 1)
    ax.set_ylim(-(len(top) - 1) * row - 0.02, row + 0.05)
    ax.set_xlabel(f"time ({unit})", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    ax.set_title(f"ΔF/F of the {len(top)} strongest neurons (each scaled to its range; label: id and "
                 "maximum ΔF/F) with inferred spikes beneath (stems, scaled to each neuron's largest)",
                 fontsize=10, loc="left")


def _text_panel(ax, rd):
    ax.axis("off")
    cert = rd.certificate
    status = str(cert.get("status", "no certificate")) if cert else "no certificate"
    colour = _STATUS_COLOURS.get(status, "#444444")
    ax.text(0.0, 1.0, "Certificate", fontsize=12, weight="bold", va="top", transform=ax.transAxes)
    ax.text(0.0, 0.955, f"● {status}", fontsize=13, weight="bold", color=colour, va="top",
            transform=ax.transAxes)
    y = 0.905
    for label, text in certificate_facts(cert)[1:]:
        ax.text(0.0, y, label, fontsize=9, va="top", transform=ax.transAxes, color="#333333")
        ax.text(0.52, y, text, fontsize=9, va="top", transform=ax.transAxes, family="monospace")
        y -= 0.04
    y -= 0.03
    ax.text(0.0, y, "Run", fontsize=12, weight="bold", va="top", transform=ax.transAxes)
    y -= 0.05
    for label, text in run_facts(rd):
        ax.text(0.0, y, label, fontsize=9, va="top", transform=ax.transAxes, color="#333333")
        ax.text(0.52, y, text, fontsize=9, va="top", transform=ax.transAxes, family="monospace")
        y -= 0.04


def _strongest(rd, n: int) -> list:
    scores = np.array([float(r.get("score")) if isinstance(r.get("score"), (int, float)) else -np.inf
                       for r in rd.neurons])
    return [int(i) for i in np.argsort(-scores, kind="stable")[:n]]


def render_summary(rd, png_path: Path, *, dpi: int = 100) -> dict:
    """Draw the summary figure of a result folder into ``png_path``.

    Parameters
    ----------
    rd : calseg.export.folder.ResultDir
    png_path : str or Path
    dpi : int, default 100

    Returns
    -------
    dict
        ``labels_drawn`` (ids drawn on the images), ``label_font_pt``, ``n_footprints``,
        ``n_traces`` and ``size_px`` (width, height) — for the HTML page and tests.

    Notes
    -----
    Ids are drawn in order of decreasing score and skipped where their box would overlap one
    already drawn; the font is sized so that an id fits a typical neuron (median area) at the
    panel's scale, between 3 and 9 pt. All ids are drawn as two path collections, so a
    500-neuron field renders in about a second.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    from .export.rois import label_outlines

    H, W = rd.shape
    N = rd.n_neurons
    outlines = label_outlines(rd.masks, rd.ids.tolist())
    colours = _colours(N)
    order = _strongest(rd, N)
    res = (rd.run.get("resolved") or {})
    diameter = float(res.get("cell_diameter_px") or 0) or (
        2 * math.sqrt(np.median([float(r.get("area") or 0) for r in rd.neurons]) / math.pi) if N else 12.0)
    diameter = max(diameter, 4.0)

    aspect = H / W
    img_w = 8.6                               # inches per image panel
    img_h = img_w * min(max(aspect, 0.35), 1.6)
    fig_w = 2 * img_w + 4.6
    bottom_h = 6.2
    fig_h = img_h + bottom_h + 0.8
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)  # Agg, without pyplot or a global backend switch
    gs = GridSpec(2, 3, figure=fig, width_ratios=[img_w, img_w, 4.4], height_ratios=[img_h, bottom_h],
                  left=0.02, right=0.99, top=1 - 0.45 / fig_h, bottom=0.45 / fig_h, wspace=0.05, hspace=0.1)
    ax_mean = fig.add_subplot(gs[0, 0])
    ax_corr = fig.add_subplot(gs[0, 1])
    ax_txt = fig.add_subplot(gs[0, 2])
    panel_w = min(img_w, img_h / aspect)      # displayed width of the image in inches
    pt_per_px = panel_w * 72.0 / W
    font = _label_font(rd, panel_w) if N else 6.0
    chosen = _choose_labels(rd, order, font, pt_per_px)
    labels = (chosen, _label_paths(rd, chosen, font, pt_per_px))
    drawn = _image_panel(ax_mean, rd.mean, "mean image", rd, outlines, colours, labels, font)
    _image_panel(ax_corr, rd.correlation, "local correlation", rd, outlines, colours, labels, font)
    _text_panel(ax_txt, rd)

    top_fp = order[:N_FOOTPRINTS]
    bottom = gs[1, :].subgridspec(1, 2, width_ratios=[0.36, 0.64], wspace=0.06)
    _footprint_grid(fig.add_subplot(bottom[0, 0]), rd, top_fp, colours, outlines, diameter)
    ax_tr = fig.add_subplot(bottom[0, 1])
    top_tr = order[:N_TRACES]
    _traces_panel(ax_tr, rd, top_tr, colours)
    name = ((rd.run.get("input") or {}).get("paths") or [str(rd.path)])[0]
    fig.suptitle(f"calseg — {Path(name).name} — {N} neurons", fontsize=13, x=0.02, ha="left", y=0.998)
    fig.savefig(png_path, dpi=dpi, format="png", metadata={"Software": "calseg"})
    return {"labels_drawn": drawn, "label_font_pt": font, "n_footprints": len(top_fp), "n_traces": len(top_tr),
            "size_px": (int(round(fig_w * dpi)), int(round(fig_h * dpi)))}


# --------------------------------------------------------------------------- html
def _table(rows, head=None) -> str:
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #ddd}.status{font-weight:bold;font-size:1.1em}
.cols{display:flex;gap:2em;flex-wrap:wrap}details{margin:.4em 0}code{background:#f6f6f6;padding:0 .2em}"""


def _html(rd, png_bytes: bytes, drawn: dict) -> str:
    cert = rd.certificate
    status = str(cert.get("status", "no certificate")) if cert else "no certificate"
    colour = _STATUS_COLOURS.get(status, "#444444")
    run = rd.run
    name = ((run.get("input") or {}).get("paths") or [str(rd.path)])[0]
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>calseg — {html.escape(Path(name).name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>calseg result: {html.escape(Path(name).name)}</h1>",
        f"<p>{rd.n_neurons} neurons · certificate <span class='status' style='color:{colour}'>"
        f"{html.escape(status)}</span> · folder <code>{html.escape(str(rd.path.resolve()))}</code></p>",
        "<div class='cols'><div><h2>Run</h2>", _table(run_facts(rd)), "</div>",
        "<div><h2>Certificate</h2>", _table(certificate_facts(cert)), "</div>",
    ]
    timings = run.get("timings_s") or {}
    if timings:
        parts += ["<div><h2>Stage timings</h2>",
                  _table([(k, _seconds(v)) for k, v in timings.items()], ["stage", "time"]), "</div>"]
    parts.append("</div>")
    parts.append("<h2>Summary</h2>")
    parts.append(f"<img alt='summary of the result' src='data:image/png;base64,"
                 f"{base64.b64encode(png_bytes).decode('ascii')}'>")
    if drawn.get("labels_drawn", 0) < rd.n_neurons:
        parts.append(f"<p>Ids are drawn for {drawn['labels_drawn']} of {rd.n_neurons} neurons "
                     "(strongest first; the others would overlap). <code>neurons.csv</code> lists all.</p>")
    tiles = cert.get("tiles") if cert else None
    if tiles:
        keys = ["tile", "status", "objective", "gap", "rho_low", "rho_up", "lam"]
        keys = [k for k in keys if any(k in t for t in tiles)]
        rows = [[_fmt(t.get(k), 6) if isinstance(t.get(k), (int, float)) else (t.get(k) if t.get(k) is not None else "—")
                 for k in keys] for t in tiles]
        parts += [f"<details><summary>Certificate of each tile ({len(tiles)})</summary>", _table(rows, keys),
                  "</details>"]
    settings = run.get("settings") or {}
    if settings:
        parts += ["<details><summary>Settings</summary>",
                  _table([(k, v) for k, v in settings.items()], ["setting", "value"]), "</details>"]
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in rd.path.iterdir() if not p.name.startswith("."))
    parts += ["<details><summary>Files in this folder</summary>",
              _table([(f,) for f in files]), "</details>",
              "<p style='color:#777;font-size:.8em'>Written by calseg "
              f"{html.escape(str(run.get('calseg_version', '')))}; self-contained (no external resources).</p>",
              "</body></html>"]
    return "\n".join(parts)


def write_report(result_dir, out_dir=None, *, dpi: int = 100) -> tuple:
    """Write ``summary.png`` and ``report.html`` for a ``calseg run`` result folder.

    Parameters
    ----------
    result_dir : str or Path
        A ``calseg run`` result folder.
    out_dir : str or Path, optional
        Where to write the two files; default ``result_dir``. Each file is written atomically.
    dpi : int, default 100
        Resolution of ``summary.png`` (the figure is about 22 x 15 inches for a square field).

    Returns
    -------
    (Path, Path)
        ``summary.png`` and ``report.html``.

    Raises
    ------
    ConfigError
        matplotlib is not installed (a calseg dependency: ``pip install matplotlib``).
    InputError
        The folder lacks a file the report needs (``masks.tif``, ``neurons.csv``, ``traces.csv``,
        ``spikes.csv``) or one is malformed. ``mean.tif``, ``correlation.tif``,
        ``footprints.tif``, ``certificate.json`` and ``run.json`` are optional.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("the report needs matplotlib (a calseg dependency): pip install matplotlib") from None
    if not isinstance(dpi, (int, np.integer)) or isinstance(dpi, bool) or not 20 <= dpi <= 600:
        raise ConfigError(f"parameter 'dpi' = {dpi!r} must be an integer from 20 to 600")
    from .export.folder import ResultDir, atomic_path

    rd = ResultDir(result_dir)
    out = Path(out_dir) if out_dir is not None else rd.path
    png = out / "summary.png"
    page = out / "report.html"
    with atomic_path(png, suffix=".png") as tmp:
        drawn = render_summary(rd, tmp, dpi=int(dpi))
    png_bytes = png.read_bytes()
    with atomic_path(page, suffix=".html") as tmp:
        tmp.write_text(_html(rd, png_bytes, drawn), encoding="utf-8")
    return png, page
