"""Small inputs shared by the hostile-input suite: a 2-atom diamond cell, rmdata files made
from it (extxyz and HDF5, 2 frames each), a cheap potential directory and a run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def lj_table(path: Path, eps: float = 0.05, sigma: float = 2.2, n: int = 400) -> None:
    """A LAMMPS pair table of the Lennard-Jones potential (eV, A), keyword LJ."""
    import numpy as np

    r = np.linspace(0.5, 5.0, n)
    sr6 = (sigma / r) ** 6
    e = 4 * eps * (sr6**2 - sr6)
    f = 24 * eps * (2 * sr6**2 - sr6) / r
    rows = "\n".join(f"{i + 1} {r[i]:.8f} {e[i]:.10e} {f[i]:.10e}" for i in range(n))
    path.write_text(f"LJ\nN {n} R 0.5 5.0\n\n{rows}\n")


def write_potential(directory: Path, eps: float = 0.05) -> Path:
    """A Li-S potential directory whose pair_coeff names a file inside it ({potdir})."""
    directory.mkdir(parents=True, exist_ok=True)
    lj_table(directory / "lj.table", eps=eps)
    meta = {"backend": "table", "elements": ["Li", "S"], "cutoff": 5.0,
            "pair_style": "table linear 400", "pair_coeff": ["* * {potdir}/lj.table LJ"],
            "callback": None, "volumes": {"Li": 14.0, "S": 14.0}}
    (directory / "potential.json").write_text(json.dumps(meta))
    return directory


@pytest.fixture(scope="session")
def hostile_inputs(tmp_path_factory) -> Path:
    """Folder of read-only-by-convention inputs: cell.xyz (unlabelled 2-atom diamond),
    data.xyz / data.h5 (rmdata output of it), pot/ (potential), run/ (run directory)."""
    import ase.io
    from ase.build import bulk

    from helpers.analysis_rundir import make_rundir
    from rmdata.make import make_dataset

    d = tmp_path_factory.mktemp("hostile_inputs")
    ase.io.write(d / "cell.xyz", bulk("C", "diamond", a=3.567))
    ase.io.write(d / "cell.cif", bulk("C", "diamond", a=3.567))
    ase.io.write(d / "POSCAR", bulk("C", "diamond", a=3.567), format="vasp")
    for out in ("data.xyz", "data.h5"):
        make_dataset(d / out, input_path=d / "cell.xyz", levels=[0, 1], strains=[0.0], workers=1)
    write_potential(d / "pot")
    make_rundir(d / "run", copies=1, n_random=1, damage=False)
    return d
