"""The validity rules' pair search equals ASE's neighbour list; the rules flag what they should."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from rmsearch.analysis.validity import close_pairs, check_validity


def _pairs(i, j, d):
    return sorted(zip(i.tolist(), j.tolist(), np.round(d, 9).tolist()))


@pytest.mark.parametrize("periodic", [True, False])
def test_close_pairs_equal_ase_neighbor_list(periodic):
    rng = np.random.default_rng(1 if periodic else 2)
    for _ in range(150):
        n = int(rng.integers(1, 14))
        if periodic:  # skewed cells, unwrapped positions, cutoffs beyond half a cell: own images count
            cell = rng.normal(size=(3, 3)) * 0.6 + np.eye(3) * rng.uniform(1.5, 6)
            atoms = Atoms(numbers=rng.choice([1, 6, 8, 16], n), cell=cell, pbc=True,
                          scaled_positions=rng.random((n, 3)))
            atoms.positions += rng.normal(size=(n, 3)) * 3.0
        else:
            atoms = Atoms(numbers=rng.choice([1, 6, 8], n), positions=rng.random((n, 3)) * 4.0)
        cut = rng.uniform(0.3, 1.5, n)
        expected = neighbor_list("ijd", atoms, cut.tolist(), self_interaction=False)
        assert _pairs(*close_pairs(atoms, cut)) == _pairs(*expected)


def test_close_pairs_large_cell_falls_back_to_ase():
    atoms = bulk("C", "diamond", a=3.57) * (8, 8, 8)  # 4096 atoms: over the dense limit
    cut = np.full(len(atoms), 0.8)
    i, j, d = close_pairs(atoms, cut)
    assert len(d) == 4 * len(atoms)  # every atom has its four bonds of 1.546 A
    assert np.allclose(d, 3.57 * np.sqrt(3) / 4)


def test_validity_flags_close_pair_and_vacuum():
    diamond = bulk("C", "diamond", a=3.57)
    assert check_validity(diamond).valid
    squeezed = diamond.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.5, 0.5, 0.5]  # 0.87 A < 0.7 x 1.52 A
    res = check_validity(squeezed)
    assert not res.valid and "0.87 A apart" in res.reason
    assert res.min_ratio == pytest.approx(np.sqrt(0.75) / (2 * 0.76), rel=1e-6)
    vacuum = diamond.copy()
    vacuum.set_cell(diamond.cell * 5, scale_atoms=False)  # 709 A^3/atom > 20 x 1.84 A^3/atom
    assert "exploded volume" in check_validity(vacuum).reason
