"""Pseudo convex hull: known vertices and distances for synthetic binary and ternary energies."""

from __future__ import annotations

import numpy as np
import pytest

from rmdata.errors import RMError
from rmsearch.analysis.hull import pseudo_hull


def test_binary_hull_known_vertices_and_distances():
    # E_A = -1 (Li), E_B = -2 (S) eV/atom; E_ex = E - x E_Li - (1 - x) E_S
    comps = ["Li", "S", "LiS", "Li2S", "LiS2", "Li", "Li3S", "Li4S4"]
    energies = [-1.0, -2.0, -2.0, -1.8, -1.9, -0.9, -1.3, -1.95]
    h = pseudo_hull(comps, energies)
    x_li = h.fractions[:, h.elements.index("Li")]
    np.testing.assert_allclose(x_li, [1, 0, 0.5, 2 / 3, 1 / 3, 1, 0.75, 0.5])
    e_ex = np.array(energies) - x_li * -1.0 - (1 - x_li) * -2.0
    np.testing.assert_allclose(h.e_ex, e_ex, atol=1e-12)
    assert sorted(comps[k] for k in h.vertices) == ["Li", "Li2S", "LiS", "S"]
    # LiS2 (x=1/3) sits above the S-LiS line at -1/3 eV/atom: 0.1 above; Li3S (x=3/4) above the
    # Li2S-Li line (-0.35 at 3/4): 0.3 above; the second Li and the second LiS: 0.1 and 0.05
    np.testing.assert_allclose(h.e_hull, [0, 0, 0, 0, 0.1, 0.1, 0.3, 0.05], atol=1e-9)


def test_ternary_hull_known_vertices_and_distances():
    # pure Fe, Ni, Cu at 0 eV/atom, so E_ex = E. FeNiCu (-0.3) and FeNi (-0.1, below the zero
    # Fe-Ni edge) are vertices. Fe2NiCu = 1/4 Fe + 3/4 FeNiCu in composition: the hull there is
    # 3/4 * -0.3 = -0.225 (any decomposition using FeNi and Cu gives -0.05), so -0.2 is 0.025 above;
    # FeCu at +0.1 is 0.1 above the zero Fe-Cu edge.
    comps = ["Fe", "Ni", "Cu", "FeNiCu", "FeNi", "FeCu", "Fe2NiCu"]
    energies = [0.0, 0.0, 0.0, -0.3, -0.1, 0.1, -0.2]
    h = pseudo_hull(comps, energies)
    assert h.elements == ["Cu", "Fe", "Ni"]
    np.testing.assert_allclose(h.e_ex, energies, atol=1e-12)
    assert sorted(comps[k] for k in h.vertices) == ["Cu", "Fe", "FeNi", "FeNiCu", "Ni"]
    np.testing.assert_allclose(h.e_hull, [0, 0, 0, 0, 0, 0.1, 0.025], atol=1e-9)
    np.testing.assert_allclose(h.fractions[6], [0.25, 0.5, 0.25])  # Cu, Fe, Ni


def test_hull_errors_are_one_line_rmerrors():
    with pytest.raises(RMError, match="no result for pure S"):
        pseudo_hull(["Li", "LiS"], [-1.0, -2.0])
    h = pseudo_hull(["Li", "LiS"], [-1.0, -2.0], elemental={"S": -2.0})
    assert h.e_ex[1] == pytest.approx(-0.5)
    with pytest.raises(RMError, match="binary or ternary"):
        pseudo_hull(["Li", "S", "Na", "K", "LiSNaK"], [0, 0, 0, 0, -1])
