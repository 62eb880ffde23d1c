"""Test plugin: a fast stand-in for :func:`calseg.pipeline.segment`, for tests of batch logic only.

Production code never reads these variables; only this module does:

* ``CALSEG_TEST_SLOW_SEGMENT=SECONDS`` — sleep that long inside each segment call (in steps,
  reporting progress), so a test can kill a batch run in the middle of a recording;
* ``CALSEG_TEST_MARKER=PATH`` — append one JSON line per segment call (pid, input paths, time)
  to PATH, so a test can count how often each recording was processed.

In-process tests install it with ``monkeypatch.setattr("calseg.pipeline.segment", fake_segment)``;
subprocess tests run ``python tests/fake_segment.py <calseg arguments>``, which installs it and
runs the ``calseg`` command line.
"""
from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np


def fake_segment(movie, settings=None, *, progress=None):
    """One 'neuron' at the pixel of largest temporal SD (none for a constant movie)."""
    from calseg.config import Settings
    from calseg.errors import ConfigError
    from calseg.pipeline import Result

    settings = (settings or Settings()).validated()
    T, H, W = movie.shape
    paths = [str(p) for p in getattr(movie, "paths", [])]
    marker = os.environ.get("CALSEG_TEST_MARKER")
    if marker:
        line = json.dumps({"pid": os.getpid(), "paths": paths, "t": time.time()}) + "\n"
        fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    delay = float(os.environ.get("CALSEG_TEST_SLOW_SEGMENT", "0") or 0)
    for k in range(10):
        if delay:
            time.sleep(delay / 10)
        if progress:
            progress("fake", k + 1, 10)
    fps = settings.fps or getattr(movie, "fps", None)
    if not fps:
        raise ConfigError("the frame rate is unknown: pass --fps")
    data = movie.read(dtype=np.float32) if hasattr(movie, "read") else np.asarray(movie, np.float32)
    sd = data.std(axis=0)
    masks = np.zeros((H, W), np.uint16)
    comps, neurons = [], []
    traces = np.zeros((T, 0), np.float32)
    if sd.max() > 0:
        y, x = np.unravel_index(int(np.argmax(sd)), sd.shape)
        ys, xs = slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2)
        masks[ys, xs] = 1
        flat = np.flatnonzero(masks.ravel())
        comps.append(SimpleNamespace(pixels=flat, weights=np.ones(flat.size, np.float32), mask=flat))
        f = data[:, ys, xs].mean(axis=(1, 2))
        traces = ((f - f.mean()) / max(abs(float(f.mean())), 1e-6)).astype(np.float32)[:, None]
        neurons.append({"id": 1, "centroid_y": float(y), "centroid_x": float(x), "area": int(flat.size),
                        "peak_dff": float(traces.max()), "snr": 1.0, "score": 1.0, "tile": 0})
    cert = {"status": "certified", "objective": 1.0, "gap": 0.0, "relative_gap": 0.0, "tiles": []}
    info = {"calseg_version": "fake", "settings": settings.to_dict(), "shape": [T, H, W],
            "timings_s": {}, "fake_segment_pid": os.getpid()}
    return Result(neurons=neurons, masks=masks, components=comps, traces=traces,
                  spikes=np.maximum(np.diff(traces, axis=0, prepend=0), 0).astype(np.float32),
                  certificate=cert, info=info, shape=(T, H, W), fps=float(fps), settings=settings,
                  images={"mean": data.mean(axis=0), "correlation": sd}, context=None)


def install() -> None:
    import calseg.pipeline

    calseg.pipeline.segment = fake_segment


if __name__ == "__main__":
    install()
    from calseg.cli import main

    main(args=sys.argv[1:], prog_name="calseg")
