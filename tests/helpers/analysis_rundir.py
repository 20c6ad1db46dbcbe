"""Build a small but real run directory for the analysis tests.

Cu-Au structures relaxed with ASE's EMT calculator (FIRE + FrechetCellFilter): fcc Cu and
Au, L1_0 CuAu, L1_2 Cu3Au and CuAu3, each relaxed once from a rattled, strained start and
recorded ``copies`` times (translated, atoms permuted: independent hits of one minimum), plus
random Cu2Au2 starts. Energies, pressures and volumes are the real EMT values of the relaxed
structures. Optionally appends the damage the analysis must survive: an invalid structure
(two atoms 0.4 A apart) marked converged, non-converged runs, a record with NaN energy, a
garbage line and a truncated last line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from ase.units import GPa

from rmsearch.records import RunRecord

FMAX = 0.01  # eV/A


def prototypes() -> dict[str, Atoms]:
    """Known Cu-Au structures (conventional cubic cells, 4 atoms)."""
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    au = bulk("Au", "fcc", a=4.08, cubic=True)
    l10 = bulk("Cu", "fcc", a=3.85, cubic=True)
    l10.symbols[[2, 3]] = "Au"  # CuAu L1_0 (layers along z)
    cu3au = bulk("Cu", "fcc", a=3.75, cubic=True)
    cu3au.symbols[[0]] = "Au"
    cuau3 = bulk("Au", "fcc", a=3.95, cubic=True)
    cuau3.symbols[[0]] = "Cu"
    return {"Cu": cu, "Au": au, "CuAu": l10, "Cu3Au": cu3au, "CuAu3": cuau3}


def relax(atoms: Atoms, steps: int = 400) -> tuple[Atoms, bool, int]:
    """FIRE + FrechetCellFilter with EMT to FMAX; returns (atoms, converged, steps)."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    ok = opt.run(fmax=FMAX, steps=steps)
    return atoms, bool(ok), opt.nsteps


def record(run_id: int, atoms: Atoms, converged: bool, nsteps: int) -> RunRecord:
    e = atoms.get_potential_energy()
    stress = atoms.get_stress()
    return RunRecord.from_atoms(
        atoms, run_id=run_id, seed=1000 + run_id, status="converged" if converged else "not_converged",
        energy=float(e), energy_per_atom=float(e / len(atoms)),
        pressure_gpa=float(-stress[:3].mean() / GPa), volume_per_atom=float(atoms.get_volume() / len(atoms)),
        fmax=float(np.linalg.norm(atoms.get_forces(), axis=1).max()), stress=stress.tolist(), n_steps=nsteps,
        n_force_calls=nsteps + 1)


def make_rundir(path: str | Path, seed: int = 0, copies: int = 3, n_random: int = 4, damage: bool = True) -> Path:
    """Write ``config.json`` and two shards into ``path``; return ``path``."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    (path / "shards").mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"seed": seed, "system": "Cu-Au", "potential": "EMT (test)"}))
    recs: list[RunRecord] = []
    run_id = 0
    for proto in prototypes().values():
        a = proto.copy()
        a.set_cell(a.cell * (1 + rng.uniform(-0.03, 0.03, (3, 3)) * np.eye(3)), scale_atoms=True)
        a.rattle(0.03, seed=int(rng.integers(1 << 30)))
        relaxed, ok, nsteps = relax(a)
        for _ in range(copies):  # independent hits of the same minimum: translated, permuted copies
            c = relaxed[rng.permutation(len(relaxed))]
            c.translate(rng.normal(size=3))
            c.wrap()
            c.calc = EMT()
            recs.append(record(run_id, c, ok, nsteps))
            run_id += 1
    for _ in range(n_random):  # random CuAu starts: other minima
        a = Atoms("Cu2Au2", cell=np.eye(3) * 3.9 + rng.uniform(-0.3, 0.3, (3, 3)), pbc=True)
        a.set_scaled_positions(rng.random((4, 3)))
        recs.append(record(run_id, *relax(a, steps=300)))
        run_id += 1
    if damage:
        bad = prototypes()["CuAu"].copy()
        bad.positions[1] = bad.positions[0] + [0.4, 0.0, 0.0]
        bad.calc = EMT()
        r = record(run_id, bad, True, 1)  # a spurious minimum reported as converged
        recs.append(r)
        run_id += 1
        nc = recs[0]
        recs.append(RunRecord(**{**nc.__dict__, "run_id": run_id, "status": "not_converged"}))
        recs.append(RunRecord(**{**nc.__dict__, "run_id": run_id + 1, "status": "exploded"}))
        recs.append(RunRecord(**{**nc.__dict__, "run_id": run_id + 2, "energy_per_atom": math.nan,
                                 "energy": math.nan}))  # converged with NaN energy
        run_id += 3
    half = len(recs) // 2
    for k, part in enumerate((recs[:half], recs[half:])):
        with open(path / "shards" / f"worker{k}.jsonl", "wb") as fh:
            for r in part:
                fh.write((r.to_json() + "\n").encode())
            if damage and k == 0:
                fh.write(b"this is not json\n")
            if damage and k == 1:
                fh.write(RunRecord(**{**part[0].__dict__, "run_id": 999}).to_json()[:60].encode())  # cut short
    return path
