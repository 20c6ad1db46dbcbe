"""The DiffCSP protocol for a search (rmsearch.analysis.match.csp_match): k = 1 is the
lowest-energy valid result of the reference's composition, k = 20 the best of its 20 lowest."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from rmsearch.analysis.match import csp_match


def _s(atoms):
    return AseAtomsAdaptor.get_structure(atoms)


def test_k1_and_k20_follow_the_energy_ranking():
    rocksalt = bulk("NaCl", "rocksalt", a=5.64)
    cscl = bulk("NaCl", "cesiumchloride", a=3.4)
    rattled = rocksalt.repeat((2, 1, 1))
    rattled.rattle(0.05, seed=1)
    results = [(0, _s(cscl), -1.0), (1, _s(rattled), -0.9), (2, _s(bulk("Si", "diamond", a=5.43)), -5.0)]
    ref = [("nacl", _s(rocksalt))]
    out = csp_match(results, ref)
    row, summary = out["rows"][0], out["summary"]
    assert not row["matched_k1"] and row["matched_k20"] and row["run_k20"] == 1
    assert 0 < row["rmse_k20"] < 0.05
    assert summary["match_rate_k1"] == 0.0 and summary["match_rate_k20"] == 1.0
    # the rocksalt result becomes the lowest: matched at k = 1 too, same RMSE
    out = csp_match([(0, _s(cscl), -0.5), (1, _s(rattled), -0.9)], ref)
    assert out["rows"][0]["matched_k1"] and out["rows"][0]["rmse_k1"] == pytest.approx(row["rmse_k20"])


def test_only_the_20_lowest_count():
    rocksalt = bulk("NaCl", "rocksalt", a=5.64)
    cscl = _s(bulk("NaCl", "cesiumchloride", a=3.4))
    results = [(i, cscl, -1.0 - 0.01 * i) for i in range(20)] + [(99, _s(rocksalt), 0.0)]
    out = csp_match(results, [("nacl", _s(rocksalt))])
    assert not out["rows"][0]["matched_k20"] and out["rows"][0]["n_results"] == 21
    assert np.isnan(out["summary"]["mean_rmse_k20"])


def test_reference_of_an_unsearched_composition_is_unmatched():
    out = csp_match([], [("kcl", _s(bulk("KCl", "rocksalt", a=6.3)))])
    assert out["rows"][0]["n_results"] == 0 and out["summary"]["n_matched_k1"] == 0
