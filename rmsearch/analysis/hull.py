"""Pseudo convex hull of binary and ternary searches.

With a potential trained on response labels the energies are *pseudo* energies, but the
convex hull over composition still ranks which stoichiometries the potential favours.
For a binary A-B with atom fraction x of A the excess energy per atom is

    E_ex = E - x E_A - (1 - x) E_B,

with E_A, E_B the lowest energies per atom of the pure elements; for a ternary the same
with three terms. The hull is built with pymatgen's PhaseDiagram on these pseudo
energies; ``e_hull`` is the distance above the hull (eV/atom, 0 on a vertex).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from rmdata.errors import RMError


@dataclass
class HullResult:
    """Per input entry: ``e_ex`` and ``e_hull`` (eV/atom); ``vertices``: indices on the hull.

    ``fractions`` has shape (n_entries, n_elements): atom fractions in ``elements`` order.
    """

    elements: list[str]
    fractions: np.ndarray
    e_ex: np.ndarray
    e_hull: np.ndarray
    vertices: list[int]
    phase_diagram: PhaseDiagram


def pseudo_hull(compositions: Sequence[str | Composition], energies_per_atom: Sequence[float],
                elemental: dict[str, float] | None = None) -> HullResult:
    """Build the pseudo hull of entries (composition, energy per atom in eV/atom).

    ``elemental`` optionally gives reference energies per atom (eV/atom) of pure elements
    that the search did not produce.

    Raises:
        RMError: fewer than 2 or more than 3 elements, or a pure element has no entry.
    """
    comps = [Composition(c) for c in compositions]
    energies = np.asarray(energies_per_atom, dtype=float)
    if len(comps) != len(energies):
        raise ValueError(f"{len(comps)} compositions but {len(energies)} energies")
    entries = [PDEntry(c, float(e) * c.num_atoms) for c, e in zip(comps, energies)]
    elements = sorted({el for c in comps for el in c.elements}, key=lambda el: el.symbol)
    if not 2 <= len(elements) <= 3:
        raise RMError(f"pseudo hull needs a binary or ternary system, got elements "
                      f"{[el.symbol for el in elements]}")
    extra = [PDEntry(Composition(el), float(e)) for el, e in (elemental or {}).items()]
    have = {c.elements[0] for c in comps if len(c.elements) == 1} | {e.composition.elements[0] for e in extra}
    missing = [el.symbol for el in elements if el not in have]
    if missing:
        raise RMError(f"pseudo hull: no result for pure {', '.join(missing)}; search the pure elements "
                      "too or give their reference energies")
    pd = PhaseDiagram(entries + extra, elements=elements)
    e_ex = np.array([pd.get_form_energy_per_atom(e) for e in entries])
    e_hull = np.array([pd.get_e_above_hull(e, allow_negative=True) for e in entries])
    stable = set(map(id, pd.stable_entries))
    vertices = [k for k, e in enumerate(entries) if id(e) in stable]
    fractions = np.array([[c.get_atomic_fraction(el) for el in elements] for c in comps])
    return HullResult(elements=[el.symbol for el in elements], fractions=fractions, e_ex=e_ex,
                      e_hull=e_hull, vertices=vertices, phase_diagram=pd)
