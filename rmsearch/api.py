"""The public Python API: relax given structures with a potential, as the search does.

    >>> from ase.build import bulk
    >>> import rmsearch
    >>> out = rmsearch.relax_atoms(bulk("C", "diamond", a=3.7), "model:carbon-uf3")  # doctest: +SKIP
    >>> out.status, out.energy_per_atom, out.atoms.get_volume()               # doctest: +SKIP

(The protocol itself is the module :mod:`rmsearch.relax`, hence the function name.)
:func:`relax_atoms` uses the search's relax protocol (:mod:`rmsearch.relax`: stop rule,
tolerances, statuses, core repulsion); :func:`relax_file` relaxes every structure of an
ASE-readable file or folder and writes the results as extxyz (``rmsearch relax``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from rmdata.errors import RMError

log = logging.getLogger(__name__)


def open_potential(potential):
    """A loaded ``Potential`` from a potential directory, ``model:NAME`` or a ``Potential``."""
    from rmsearch.potentials import Potential, load_potential
    from rmsearch.registry import resolve_potential

    if isinstance(potential, Potential):
        return potential
    return load_potential(resolve_potential(os.fspath(potential)))


def check_elements(atoms: Atoms, elements: Sequence[str], origin: str) -> None:
    """RMError naming ``origin`` when ``atoms`` hold an element outside ``elements``."""
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(elements))
    if unknown:
        raise RMError(f"{origin}: elements {unknown} are not in the potential ({' '.join(elements)}); "
                      "use a potential fitted on them")


def iter_relax(structures: Iterable[Atoms], potential, *, seed: int = 0, **settings: Any
               ) -> Iterator[Any]:
    """Relax ``structures`` one after another with one LAMMPS instance; yields one
    ``RelaxOutcome`` per structure (status, energy in eV, stress in eV/A^3, final atoms).

    ``settings``: fields of :class:`rmsearch.relax.RelaxSettings` (``fmax`` eV/A,
    ``smax_gpa`` GPa, ``max_steps``, ``optimizer``, ``kick`` A, ...). The kick stage of
    structure i draws from ``default_rng([seed, i])``. A failing relaxation never raises; it
    has a failure status.
    """
    from rmsearch.relax import Relaxer, RelaxSettings

    pot = open_potential(potential)
    with Relaxer(pot, RelaxSettings(**settings)) as relaxer:
        for i, atoms in enumerate(structures):
            check_elements(atoms, pot.elements, f"structure {i}")
            yield relaxer.relax(atoms, rng=np.random.default_rng([seed, i]))


def relax_atoms(atoms: Atoms | Sequence[Atoms], potential, *, seed: int = 0, **settings: Any):
    """Relax one structure (returns its ``RelaxOutcome``) or a list (returns a list).

    ``potential``: a potential directory, ``model:NAME`` or a loaded ``Potential``; other
    keywords as :func:`iter_relax`. ``outcome.atoms`` is the final structure,
    ``outcome.status`` ``converged``, ``not_converged``, ``lost_atoms``, ``exploded``,
    ``collapsed``, ``nan`` or ``error: ...``.
    """
    if isinstance(atoms, Atoms):
        return next(iter_relax([atoms], potential, seed=seed, **settings))
    return list(iter_relax(atoms, potential, seed=seed, **settings))


def relax_file(inputs: str | os.PathLike, potential, output: str | os.PathLike, *, seed: int = 0,
               overwrite: bool = False, progress: bool = False, **settings: Any) -> dict[str, Any]:
    """Relax every structure of ``inputs`` (an ASE-readable file or a folder of them) and
    write the final structures to the extxyz ``output`` (atomically; never over an input).

    Each frame's ``info``: ``input_index`` (0-based, in reading order), ``source_id``,
    ``status``, ``energy`` (eV), ``energy_per_atom`` (eV/atom), ``pressure_gpa`` (GPa,
    positive = compressed), ``volume_per_atom`` (A^3/atom, crystals), ``fmax`` (eV/A),
    ``n_force_calls``. Returns a summary: counts per status and the output path.
    """
    import ase.io

    from rmdata.cliutils import check_output
    from rmdata.datasets import load_structures
    from rmdata.utils import atomic_output
    from rmsearch.records import record_from_outcome

    output = Path(output)
    inputs = Path(inputs)
    if output.suffix not in (".xyz", ".extxyz"):
        raise RMError(f"-o {output}: the output is extxyz; name it *.extxyz or *.xyz")
    check_output(output, inputs=[inputs], overwrite=overwrite)
    if output.exists() and inputs.is_dir() and inputs.resolve() in output.resolve().parents:
        raise RMError(f"-o {output}: is one of the inputs in {inputs}; choose another output name")
    pot = open_potential(potential)
    items = list(load_structures(input_path=inputs, bad=[]))
    for sid, atoms in items:
        check_elements(atoms, pot.elements, f"{inputs} ({sid})")
    frames, counts = [], {}
    outcomes = iter_relax([a for _, a in items], pot, seed=seed, **settings)
    if progress:
        from tqdm import tqdm

        outcomes = tqdm(outcomes, total=len(items), unit="structure", desc="relax")
    for i, ((sid, start), outcome) in enumerate(zip(items, outcomes, strict=True)):
        rec = record_from_outcome(outcome, start, run_id=i, seed=seed, wall_s=float(outcome.wall_s))
        atoms = rec.to_atoms()
        atoms.info.pop("run_id")
        atoms.info.update(input_index=i, source_id=sid, energy=rec.energy, fmax=rec.fmax,
                          n_force_calls=rec.n_force_calls)
        if not atoms.pbc.all():
            atoms.info.pop("volume_per_atom", None)
            atoms.info.pop("pressure_gpa", None)
        frames.append(atoms)
        counts[rec.status] = counts.get(rec.status, 0) + 1
    with atomic_output(output) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return {"output": str(output), "n_structures": len(frames), "status_counts": counts}
