"""LAMMPS-native potentials fitted on rmdata files (forces and stresses only): UF3 and SNAP.

:func:`fit_native` is ``rmsearch fit-native``: it picks the kind (``KINDS``; settings
classes :class:`rmsearch.uf3.UF3Settings` and :class:`rmsearch.snap.SnapSettings`) and how
the coefficients are learnt, and :func:`rmsearch.fitting.fit_potential` does the shared
rest: design matrix, ridge least squares, held-out errors, the potential directory and
its LAMMPS self-check. The descriptors differ: SNAP rows come from LAMMPS ``compute snap``
(:mod:`rmsearch.snap`, with the measured recipe), UF3 rows from numpy (:mod:`rmsearch.uf3`).
UF3 is the default: ~20-40x cheaper per force call than SNAP, and taught by a quadratic
SNAP fitted on the same file (:mod:`rmsearch.distill`) it finds diamond, which UF3 fitted
on the labels alone does not (README, "Native potentials").
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from rmdata.errors import RMError
from rmsearch.distill import DistillSettings, distill
from rmsearch.fitting import FitSettings, fit_potential, labels_alone
from rmsearch.snap import SnapSettings
from rmsearch.uf3 import UF3Settings

#: The data recipe of the native potentials (README "Native potentials"): the diamond preset
#: with these linear strains (compressive down to -20 %) and this many noise draws per
#: (strain, level), i.e. ``make_dataset(..., strains=NATIVE_STRAINS, copies=NATIVE_COPIES)``.
NATIVE_STRAINS = (-0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1)
NATIVE_COPIES = 3
#: The kind ``fit-native`` fits unless told otherwise.
DEFAULT_KIND = "uf3"
#: Settings class of each ``--kind``.
SETTINGS: dict[str, type[FitSettings]] = {"uf3": UF3Settings, "snap": SnapSettings}
KINDS = tuple(SETTINGS)


def fit_native(data: str | os.PathLike, out: str | os.PathLike, *, kind: str | None = None,
               settings: FitSettings | None = None, mace_model: str | os.PathLike | None = None,
               overwrite: bool = False, teacher: bool | DistillSettings = True,
               workers: int = 1) -> dict[str, Any]:
    """Fit a native potential (``kind`` uf3 or snap) on an rmdata file and write the potential directory ``out``.

    A UF3 fit learns from a quadratic SNAP teacher fitted on the same file
    (:func:`rmsearch.distill.distill`; ``teacher``: True for the default recipe, a
    :class:`DistillSettings`, or False for the rmdata labels alone); SNAP fits ignore it.
    Returns the fit report (also stored as ``fit.json`` in ``out``; see
    :func:`rmsearch.fitting.fit_potential`): settings, train and held-out RMSEs of forces
    (eV/A) and stress (eV/A^3) on the rmdata frames, MACE's on the same held-out frames
    when ``mace_model`` is given, the distillation rounds, and the LAMMPS self-check.
    ``workers``: processes of a streamed fit (``--solver``).
    """
    if kind is None:
        kind = settings.kind if settings is not None else DEFAULT_KIND
    if kind not in KINDS:
        raise RMError(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
    expected = SETTINGS[kind]
    settings = settings or expected()
    if type(settings) is not expected:
        raise RMError(f"--kind {kind}: settings are {type(settings).__name__}, expected {expected.__name__}")
    learn = labels_alone
    if teacher is not False and settings.distills:
        learn = partial(distill, opts=teacher if isinstance(teacher, DistillSettings) else None)
    return fit_potential(data, out, settings, learn=learn, mace_model=mace_model, overwrite=overwrite,
                         workers=workers)
