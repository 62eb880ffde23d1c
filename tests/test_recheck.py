"""`calseg certify`: the certificate recomputed from saved factors and the movie agrees with the run's."""
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from calseg.cli import main
from test_pipeline import FPS, make_movie


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recheck")
    movie, _ = make_movie(shape=(32, 32), T=300, cells=[(16, 16, 4, 3.0)], seed=7)
    path = tmp / "movie.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TYX", "finterval": 1 / FPS})
    out = tmp / "out"
    r = CliRunner().invoke(main, ["run", str(path), "-o", str(out), "--cell-diameter", "8", "--tau", "0.5",
                                  "--workers", "1", "--motion-correction", "none", "--no-report"])
    assert r.exit_code == 0, r.output
    return path, out, movie


def test_certify_agrees_with_the_run(run_folder):
    path, out, _ = run_folder
    r = CliRunner().invoke(main, ["certify", str(out), str(path), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    saved = json.loads((out / "certificate.json").read_text())
    assert res["agrees"] and res["saved_status"] == saved["status"]
    assert res["objective"] == pytest.approx(saved["objective"], rel=1e-2)
    assert res["gap"] >= 0


def test_certify_disagrees_with_another_movie(run_folder, tmp_path):
    path, out, movie = run_folder
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, movie + 5 * np.random.default_rng(1).standard_normal(movie.shape).astype(np.float32),
                     imagej=True, metadata={"axes": "TYX", "finterval": 1 / FPS})
    r = CliRunner().invoke(main, ["certify", str(out), str(other)])
    assert r.exit_code == 1 and "DISAGREES" in r.output


def test_certify_refuses_a_folder_without_factors(tmp_path, run_folder):
    path, _, _ = run_folder
    r = CliRunner().invoke(main, ["certify", str(tmp_path), str(path)])
    assert r.exit_code == 1 and "factors.npz" in r.stderr
