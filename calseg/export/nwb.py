"""NWB (Neurodata Without Borders) export of a result folder, through pynwb (the ``nwb`` extra).

The file holds, for N neurons, T frames and an H x W field of view:

* session metadata (description, identifier derived from the input's fingerprint, start time
  = the input file's modification time, which is the best calseg knows), a ``Device`` named
  "calseg input", an ``ImagingPlane`` with its ``OpticalChannel`` (imaging rate = the frame rate;
  indicator from the settings when given; wavelengths and location unknown: NaN / "unknown");
* ``processing/ophys``:

  - ``ImageSegmentation/PlaneSegmentation``: one row per neuron with a ``pixel_mask`` of
    (x, y, weight) — the neuron's whole mask (``regions.json``) weighted by its footprint — plus
    columns ``neuron_id``, ``centroid_y``, ``centroid_x``, ``area``, ``score``, ``snr``;
  - ``DfOverF/DfOverF``: ``RoiResponseSeries`` (T, N), calseg's ΔF/F;
  - ``Fluorescence/Deconvolved``: ``RoiResponseSeries`` (T, N), the inferred spikes (calcium
    increments per frame, ΔF/F units), as Suite2p's NWB export stores its deconvolution;
  - ``SummaryImages``: the mean and local-correlation images;

and both series reference the plane segmentation's rows and use ``rate`` = frame rate.
"""
from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import ConfigError

__all__ = ["write_nwb"]


def _start_time(rd) -> datetime.datetime:
    files = ((rd.run.get("input") or {}).get("files") or [])
    mtime = None
    for f in files:
        if isinstance(f, dict) and isinstance(f.get("mtime"), (int, float)):
            mtime = float(f["mtime"])
            break
    if mtime is None:
        p = rd.file("run.json", required=False) or rd.file("masks.tif")
        mtime = p.stat().st_mtime
    return datetime.datetime.fromtimestamp(mtime, tz=datetime.timezone.utc).replace(microsecond=0)


def _identifier(rd) -> str:
    inp = rd.run.get("input") or {}
    base = inp.get("sha256_head_tail") or str(rd.path.resolve())
    h = hashlib.sha256(f"{base}|{__version__}|{rd.n_neurons}".encode()).hexdigest()[:16]
    return f"calseg-{h}"


def write_nwb(result_dir, path=None) -> Path:
    """Write a ``calseg run`` result folder as an NWB 2 file.

    Parameters
    ----------
    result_dir : str or Path
        A ``calseg run`` result folder.
    path : str or Path, optional
        The file to write; default ``result_dir/calseg.nwb``. Written atomically.

    Returns
    -------
    Path

    Raises
    ------
    ConfigError
        pynwb is not installed (``pip install 'calseg[nwb]'``).

    Notes
    -----
    Read it back with ``pynwb.NWBHDF5IO(path, "r").read()``; the ΔF/F are at
    ``nwbfile.processing["ophys"]["DfOverF"]["DfOverF"].data`` (T, N) and the masks at
    ``...["ImageSegmentation"]["PlaneSegmentation"]["pixel_mask"][i]`` as (x, y, weight) rows.
    """
    try:
        from hdmf.backends.hdf5.h5_utils import H5DataIO
        from pynwb import NWBHDF5IO, NWBFile
        from pynwb.base import Images
        from pynwb.image import GrayscaleImage
        from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries
    except ImportError:
        raise ConfigError("NWB export needs pynwb: pip install 'calseg[nwb]'") from None
    from .folder import ResultDir, atomic_path

    rd = ResultDir(result_dir)
    path = Path(path) if path is not None else rd.path / "calseg.nwb"
    H, W = rd.shape
    N = rd.n_neurons
    traces = rd.traces.astype(np.float32)          # (T, N)
    spikes = rd.spikes.astype(np.float32)
    T = traces.shape[0]
    fps = rd.fps
    run = rd.run
    settings = run.get("settings") or {}
    resolved = run.get("resolved") or {}
    inp = run.get("input") or {}
    paths = [str(p) for p in inp.get("paths", [])]

    nwb = NWBFile(
        session_description=f"calseg {run.get('calseg_version', __version__)} segmentation of "
                            f"{', '.join(Path(p).name for p in paths) or 'a calcium-imaging recording'}",
        identifier=_identifier(rd),
        session_start_time=_start_time(rd),
        source_script=f"calseg {__version__} (calseg.export.nwb.write_nwb)",
        source_script_file_name="calseg/export/nwb.py",
        notes=("Traces are dF/F from calseg's factorization (neuropil and background are separate model "
               "terms); 'Deconvolved' holds calseg's inferred spikes (calcium increments per frame, dF/F "
               "units). Session start time = the input file's modification time."),
    )
    device = nwb.create_device(name="calseg input", description="the microscope that recorded "
                               + (", ".join(paths) if paths else "the input") + " (not recorded by calseg)")
    channel = OpticalChannel(name="OpticalChannel", description="the recording's functional channel",
                             emission_lambda=float("nan"))
    pixel_size = settings.get("pixel_size")
    plane_kw = {}
    if pixel_size:
        plane_kw = {"grid_spacing": [float(pixel_size), float(pixel_size)], "grid_spacing_unit": "micrometers"}
    plane = nwb.create_imaging_plane(
        name="ImagingPlane", optical_channel=channel, device=device,
        description=f"{H} x {W} pixel field of view, {T} frames",
        excitation_lambda=float("nan"), imaging_rate=float(fps) if fps else float("nan"),
        indicator=str(settings.get("indicator") or "unknown"), location="unknown", **plane_kw)

    ophys = nwb.create_processing_module(name="ophys", description="calseg segmentation, dF/F and spikes")
    seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(seg)
    ps = seg.create_plane_segmentation(
        name="PlaneSegmentation", imaging_plane=plane,
        description="calseg neurons: each neuron's whole mask (regions.json) with its footprint weights; "
                    "masks of neighbours may overlap")
    for col, desc in (("neuron_id", "calseg neuron id (column name in traces.csv / spikes.csv)"),
                      ("centroid_y", "mask centroid, row (pixels)"), ("centroid_x", "mask centroid, column (pixels)"),
                      ("area", "pixels in masks.tif"), ("score", "calseg score (strength of the component)"),
                      ("snr", "calseg signal-to-noise ratio")):
        if N:  # hdmf cannot type an empty column
            ps.add_column(name=col, description=desc)
    for k, (coords, page) in enumerate(zip(rd.regions, rd.iter_footprints(range(N)))):
        r = rd.neurons[k]
        w = page[coords[:, 0], coords[:, 1]].astype(np.float64)
        if not (w > 0).any():
            w = np.ones(len(coords))
        pm = [(int(x), int(y), float(v)) for (y, x), v in zip(coords.tolist(), w.tolist())]

        def num(key):
            v = r.get(key)
            return float(v) if isinstance(v, (int, float)) else float("nan")

        ps.add_roi(pixel_mask=pm, neuron_id=int(rd.ids[k]), centroid_y=num("centroid_y"),
                   centroid_x=num("centroid_x"), area=num("area"), score=num("score"), snr=num("snr"))
    rois = ps.create_roi_table_region(region=list(range(N)), description=f"all {N} calseg neurons")
    timing = {"rate": float(fps), "starting_time": 0.0} if fps else {"timestamps": np.arange(T, dtype=np.float64)}

    def series(name, data, desc):
        data = data if N else np.zeros((T, 0), np.float32)
        wrapped = H5DataIO(data, compression="gzip", compression_opts=4, chunks=True) if data.size else data
        return RoiResponseSeries(name=name, data=wrapped, rois=rois, unit="dF/F", description=desc, **timing)

    dff = DfOverF(name="DfOverF")
    ophys.add(dff)      # attach containers first so each series' ROI region shares the file as ancestor
    dff.add_roi_response_series(series("DfOverF", traces, "calseg dF/F, (frames, neurons)"))
    deconv = Fluorescence(name="Deconvolved")
    ophys.add(deconv)
    deconv.add_roi_response_series(series("Deconvolved", spikes,
                                          "calseg inferred spikes: calcium increment per frame in dF/F units"))
    images = []
    for name, img, desc in (("mean", rd.mean, "mean image"), ("correlation", rd.correlation,
                                                               "local correlation image (each pixel with its neighbours)")):
        if img is not None:
            images.append(GrayscaleImage(name=name, data=np.asarray(img, np.float32), description=desc))
    if images:
        ophys.add(Images(name="SummaryImages", images=images, description="calseg summary images"))
    if resolved:
        nwb.add_scratch(np.array([str(resolved)]), name="calseg_resolved_settings",
                        description="run.json 'resolved' (frame rate, cell diameter, decay, lambda, tiles)")

    with atomic_path(path, suffix=".nwb") as tmp:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
    return path
