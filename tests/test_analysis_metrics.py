"""Generation metrics and reference matching on the 123 structures of the mp20-subset val split.

Scored against themselves they give COV-R = COV-P = 1 and a Frechet distance of 0; unrelaxed
random starts of the same compositions score clearly worse. CrystalNN fingerprints are the
slow part (~10-40 s), computed once per test session.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from rmsearch.analysis.match import match_references
from rmsearch.analysis.metrics import (
    compositional_validity,
    frechet_distance,
    generation_metrics,
    structural_validity,
    structure_fingerprints,
)
from rmsearch.analysis.references import load_references


@pytest.fixture(scope="module")
def val():
    refs = load_references("mp20-subset:val")
    assert len(refs) == 123
    return [s for _, s in refs]


@pytest.fixture(scope="module")
def val_fps(val):
    return structure_fingerprints(val, workers=2)


@pytest.fixture(scope="module")
def random_starts(val):
    """Random positions in a random cell of +-20 % the reference volume, same species."""
    rng = np.random.default_rng(2024)
    out = []
    for s in val:
        lengths = rng.uniform(0.8, 1.2, 3)
        lat = Lattice.from_parameters(*lengths, *rng.uniform(65.0, 115.0, 3)).scale(s.volume * rng.uniform(0.8, 1.2))
        out.append(Structure(lat, s.species, rng.random((len(s), 3))))
    return out


def test_reference_against_itself(val, val_fps):
    m = generation_metrics(val, val, ref_fingerprints=val_fps, gen_fingerprints=val_fps)
    assert np.isfinite(val_fps).all() and val_fps.shape == (123, 61)
    assert m["cov_r"] == 1.0 and m["cov_p"] == 1.0
    assert m["frechet_distance"] == pytest.approx(0.0, abs=1e-8)
    assert m["structural_validity"] == 1.0
    assert 0.8 < m["compositional_validity"] < 1.0  # SMACT rejects some real intermetallics (LiS4, ...)


def test_random_starts_score_clearly_worse(val, val_fps, random_starts):
    # fingerprints of random cells cost ~3x those of the symmetric references: a seeded
    # subset of 48 compositions keeps the test fast. COV-R is over the same 48 references.
    pick = np.sort(np.random.default_rng(7).choice(len(val), 48, replace=False))
    gen = [random_starts[k] for k in pick]
    gen_fps = structure_fingerprints(gen, workers=2)
    m = generation_metrics(gen, [val[k] for k in pick], ref_fingerprints=val_fps[pick], gen_fingerprints=gen_fps)
    assert m["cov_r"] < 0.5 and m["cov_p"] < 0.8
    assert m["frechet_distance"] > 0.2
    assert m["structural_validity"] < 1.0  # some random atoms land closer than 0.5 A
    # the same 48 references against themselves: perfect
    ok = generation_metrics([val[k] for k in pick], [val[k] for k in pick], ref_fingerprints=val_fps[pick],
                            gen_fingerprints=val_fps[pick])
    assert ok["cov_r"] == ok["cov_p"] == 1.0 and ok["frechet_distance"] < 1e-8


def test_validity_rules():
    lat = Lattice.cubic(4.0)
    assert structural_validity(Structure(lat, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    assert not structural_validity(Structure(lat, ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]]))  # 0.4 A apart
    assert compositional_validity("NaCl") and compositional_validity("Fe2O3") and compositional_validity("CuAu")
    assert not compositional_validity("NaCl2")


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 2))
    b = rng.normal(size=(20000, 2)) * 2.0 + 1.0
    # |mu|^2 = 2; Tr(I + 4I - 2*2I) = 2
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.03)


def test_match_rate_against_itself_and_random(val, random_starts):
    refs = [(f"val{k}", s) for k, s in enumerate(val[:25])]
    self_match = match_references(list(enumerate(val[:25])), refs, top_k=5)
    assert self_match.match_rate == 1.0 and self_match.mean_rmsd == pytest.approx(0.0, abs=1e-6)
    assert [r["cluster_id"] for r in self_match.rows] == list(range(25)) or self_match.n_matched == 25
    rnd = match_references(list(enumerate(random_starts[:25])), refs, top_k=5)
    assert rnd.match_rate < 0.3
