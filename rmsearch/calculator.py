"""An ASE calculator for any rmsearch potential directory (MACE, SNAP, UF3, ...).

The energies, forces and stresses are the ones the search relaxes on: the potential
evaluated by LAMMPS (``run 0``), with the core-repulsion overlay of the relax protocol
unless ``core_repulsion=None``. So ASE's optimisers, molecular dynamics and phonon tools
see exactly the landscape of ``rmsearch launch``::

    >>> from ase.build import bulk
    >>> from ase.filters import FrechetCellFilter
    >>> from ase.optimize import FIRE
    >>> import rmsearch
    >>> atoms = bulk("C", "diamond", a=3.7)
    >>> atoms.calc = rmsearch.Calculator("model:carbon-uf3")
    >>> FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01)        # doctest: +SKIP

Units: energy eV, forces eV/A, stress eV/A^3 as Voigt-6 in ASE order and sign (positive =
tensile). A periodic structure must be periodic in all three directions; a molecule
(``pbc=False``) gets no stress.
"""

from __future__ import annotations


import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator as ASECalculator
from ase.calculators.calculator import all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from rmdata.errors import RMError

#: The default: the relax protocol's overlay (``rmsearch.engine.CoreRepulsion()``).
DEFAULT = "default"


class Calculator(ASECalculator):
    """ASE calculator evaluating a potential directory (or ``model:NAME``) through LAMMPS.

    potential: a potential directory (``rmsearch export`` / ``rmsearch fit-native``), a
    shipped model as ``model:NAME`` (``rmsearch models list``), or a loaded
    :class:`rmsearch.potentials.Potential`. dtype: model precision of the mace backend
    (``"float64"`` by default here, for smooth finite differences; searches use float32).
    core_repulsion: the relax protocol's overlay (default), ``None`` for the bare potential,
    or a :class:`rmsearch.engine.CoreRepulsion`.

    Call :meth:`close` (or use ``with``) to release LAMMPS and the model.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential, *, dtype: str = "float64", core_repulsion=DEFAULT, **kwargs):
        super().__init__(**kwargs)
        from rmsearch.api import open_potential
        from rmsearch.engine import CoreRepulsion, LammpsEngine

        potential = open_potential(potential)
        if isinstance(core_repulsion, str) and core_repulsion == DEFAULT:
            core_repulsion = CoreRepulsion()
        self.potential = potential
        self.engine = LammpsEngine(potential, dtype=dtype, core_repulsion=core_repulsion)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        from rmsearch.api import check_elements
        from rmsearch.protocol import check_structure

        atoms = self.atoms
        try:
            periodic = check_structure(atoms)
            check_elements(atoms, self.potential.elements, "atoms")
        except RMError as exc:
            raise ValueError(str(exc)) from exc
        energy, forces, stress = self.engine.compute(atoms.positions.astype(float),
                                                     np.array(atoms.cell, dtype=float),
                                                     atoms.numbers, periodic)
        self.results = {"energy": float(energy), "free_energy": float(energy),
                        "forces": np.array(forces, dtype=float)}
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(stress, dtype=float))

    def close(self) -> None:
        """Release LAMMPS and the model."""
        self.engine.close()

    def __enter__(self) -> Calculator:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()
