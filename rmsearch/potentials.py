"""Potential directories: export a trained model for LAMMPS, and load it back.

A potential directory holds everything a search needs, in plain files:

- ``potential.json``: backend name, element list (LAMMPS type order), cutoff (A), the
  model file name, the ``pair_style`` arguments and ``pair_coeff`` lines LAMMPS loads it
  with, per-element volumes (A^3/atom) for random starts and where they came from, the
  export's self-check numbers and provenance.
- the model file (``model.model`` for the ``mace`` backend, copied byte for byte);
- ``potential.in``: the LAMMPS commands that load it, rendered from the templates in
  ``lammps_inputs/`` (for reading and for use outside rmsearch).

Backends: ``mace`` (default) evaluates the model in Python and hands energy, forces and
virial to LAMMPS through ``fix external pf/callback`` (``pair_style zero``). A
LAMMPS-native backend (``snap``, ...) needs only a ``potential.json`` whose ``pair_style``
and ``pair_coeff`` name its files, and ``callback: null``: the relaxation code treats
both alike.

Per-element volumes are fitted by least squares, ``V_frame = sum_e n_e v_e``, on the
training set's unperturbed periodic frames (``noise_level == 0`` and ``strain == 0``); a
training set without periodic frames falls back to covalent-radius volumes
``(4/3) pi r_cov^3 / 0.34`` (0.34 = diamond packing fraction) and says so in
``volumes_source``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from rmdata.errors import RMError, describe_exception
from rmdata.utils import provenance, sha256_file, write_json_atomic
from rmsearch.engine import LammpsEngine, Potential, lammps_path, pair_commands

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BACKENDS = ("mace",)
#: Packing fraction used for covalent-radius fallback volumes (diamond's).
COVALENT_PACKING = 0.34
#: Tolerances of the export self-check: LAMMPS against MACECalculator, float64.
VERIFY_FORCE_TOL = 1e-6  # eV/A
VERIFY_STRESS_TOL = 1e-6  # eV/A^3
VERIFY_ENERGY_TOL = 1e-6  # eV


def load_potential(directory: str | os.PathLike) -> Potential:
    """Read a potential directory written by :func:`export_potential` (or by hand)."""
    directory = Path(directory)
    meta_path = directory / "potential.json"
    if not meta_path.is_file():
        raise RMError(f"{meta_path}: not found; create the potential directory with "
                      "'rmsearch export MODEL --out DIR'")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RMError(f"{meta_path}: not valid JSON ({describe_exception(exc)}); re-run 'rmsearch export'") from exc
    if not isinstance(meta, dict):
        raise RMError(f"{meta_path}: not a JSON object; re-run 'rmsearch export'")
    for key in ("backend", "elements", "cutoff", "pair_style", "pair_coeff", "volumes"):
        if key not in meta:
            raise RMError(f"{meta_path}: field {key!r} missing; re-run 'rmsearch export'")
    subst = {"potdir": lammps_path(directory)}
    try:
        elements = [str(e) for e in meta["elements"]]
        volumes = {str(k): float(v) for k, v in meta["volumes"].items()}
        cutoff = float(meta["cutoff"])
        pair_style = str(meta["pair_style"]).format(**subst)
        pair_coeff = [str(c).format(**subst) for c in meta["pair_coeff"]]
        model_file = directory / str(meta["model"]) if meta.get("model") else None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise RMError(f"{meta_path}: malformed field ({describe_exception(exc)}); re-run 'rmsearch export'") from exc
    from ase.data import chemical_symbols

    unknown = [e for e in elements if e not in chemical_symbols[1:]]
    bad_volumes = [e for e, v in volumes.items() if not (np.isfinite(v) and v > 0)]
    if not elements or unknown or bad_volumes or not (np.isfinite(cutoff) and cutoff > 0):
        raise RMError(f"{meta_path}: elements {elements}, cutoff {cutoff} or volumes {volumes} are not valid "
                      "(known elements, finite positive numbers); re-run 'rmsearch export'")
    missing = [e for e in elements if e not in volumes]
    if missing:
        raise RMError(f"{meta_path}: field 'volumes' lacks {missing}; re-run 'rmsearch export'")
    if model_file is not None and not model_file.is_file():
        raise RMError(f"{model_file}: model file of the potential is missing; re-run 'rmsearch export'")
    return Potential(directory=directory, backend=str(meta["backend"]), elements=elements,
                     cutoff=cutoff, volumes=volumes, pair_style=pair_style, pair_coeff=pair_coeff,
                     callback=meta.get("callback"), model_file=model_file, meta=meta)


# ----------------------------------------------------------------------------- volumes

def covalent_volume(symbol: str) -> float:
    """Fallback volume per atom (A^3) from the covalent radius: (4/3) pi r^3 / 0.34."""
    from ase.data import atomic_numbers, covalent_radii

    r = covalent_radii[atomic_numbers[symbol]]
    return float(4.0 / 3.0 * np.pi * r**3 / COVALENT_PACKING)


def _unperturbed_periodic(frames: list) -> list:
    periodic = [a for a in frames if a.pbc.all() and a.cell.volume > 0]
    clean = [a for a in periodic if a.info.get("noise_level", None) == 0
             and abs(float(a.info.get("strain", 0.0))) < 1e-12]
    if clean:
        return clean
    level0 = [a for a in periodic if a.info.get("noise_level", None) == 0]
    return level0 or periodic


def fit_volumes(frames: list, elements: list[str]) -> tuple[dict[str, float], str]:
    """Per-element volumes (A^3/atom) by least squares on unperturbed periodic frames.

    Solves ``min |A v - V|^2 + lam |v - v_cov|^2`` where ``A[f, e]`` counts element ``e``
    in frame ``f`` and ``V[f]`` is the frame's volume; the small ridge term (lam = 1e-6
    times the scale of ``A^T A``) only matters for elements the frames cannot separate,
    which then keep their covalent-radius volume. Returns the volumes and a one-line
    description of the source.
    """
    use = _unperturbed_periodic(frames)
    cov = np.array([covalent_volume(e) for e in elements])
    if not use:
        return ({e: float(v) for e, v in zip(elements, cov)},
                ("covalent radii: the training set has no periodic frames "
                 f"((4/3) pi r_cov^3 / {COVALENT_PACKING})"))
    index = {e: k for k, e in enumerate(elements)}
    counts = np.zeros((len(use), len(elements)))
    for f, atoms in enumerate(use):
        for sym in atoms.get_chemical_symbols():
            if sym not in index:
                raise RMError(f"training set contains element {sym}, which the model does not know "
                              f"(model elements: {elements})")
            counts[f, index[sym]] += 1
    vols = np.array([a.cell.volume for a in use])
    ata = counts.T @ counts
    lam = 1e-6 * max(np.trace(ata), 1.0)
    v = np.linalg.solve(ata + lam * np.eye(len(elements)), counts.T @ vols + lam * cov)
    present = counts.sum(0) > 0
    v = np.where(present, v, cov)
    if (v <= 0).any():
        log.warning("least-squares volumes not all positive (%s); using covalent-radius volumes "
                    "for those elements", dict(zip(elements, v.round(3))))
        v = np.where(v > 0, v, cov)
    source = (f"least squares on {len(use)} unperturbed periodic training frame(s)"
              + ("" if present.all() else
                 f"; covalent radii for {[e for e, p in zip(elements, present) if not p]} (absent)"))
    return {e: float(x) for e, x in zip(elements, v)}, source


# ----------------------------------------------------------------------------- export

def _test_structure(elements: list[str], volumes: dict[str, float], seed: int = 0):
    """A seeded, skewed, rattled periodic cell with every element (for the self-check)."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    symbols = [elements[k % len(elements)] for k in range(max(8, 2 * len(elements)))]
    vol = sum(volumes[s] for s in symbols)
    cell = np.eye(3) + 0.15 * (rng.random((3, 3)) - 0.5)
    cell *= (vol / abs(np.linalg.det(cell))) ** (1 / 3)
    # a grid of fractional positions, rattled, keeps atoms apart
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], float) / 2
    frac = np.vstack([grid, rng.random((len(symbols) - 8, 3))])[: len(symbols)]
    frac = frac + 0.05 * (rng.random(frac.shape) - 0.5)
    return Atoms(symbols=symbols, scaled_positions=frac % 1.0, cell=cell, pbc=True)


def verify_potential(potential: Potential, seed: int = 0) -> dict[str, float]:
    """Compare LAMMPS (through :class:`rmsearch.engine.LammpsEngine`) with MACECalculator.

    Returns the largest absolute differences of energy (eV), forces (eV/A) and stress
    (eV/A^3) on a seeded skewed test cell; raises RMError above the tolerances.
    """
    from mace.calculators import MACECalculator

    atoms = _test_structure(potential.elements, potential.volumes, seed)
    engine = LammpsEngine(potential, dtype="float64", core_repulsion=None)
    try:
        energy, forces, stress = engine.compute(atoms.positions, np.asarray(atoms.cell),
                                                atoms.numbers, True)
    finally:
        engine.close()
    calc = MACECalculator(model_paths=str(potential.model_file), device="cpu", default_dtype="float64")
    ref = atoms.copy()
    ref.calc = calc
    ref_e = ref.get_potential_energy()
    ref_f = ref.get_forces()
    ref_s = ref.get_stress(voigt=False)
    diff = {"energy_eV": float(abs(energy - ref_e)),
            "forces_eV_per_A": float(np.abs(forces - ref_f).max()),
            "stress_eV_per_A3": float(np.abs(stress - ref_s).max()),
            "max_force_eV_per_A": float(np.abs(ref_f).max()),
            "max_stress_eV_per_A3": float(np.abs(ref_s).max())}
    if not (diff["forces_eV_per_A"] <= VERIFY_FORCE_TOL and diff["stress_eV_per_A3"] <= VERIFY_STRESS_TOL
            and diff["energy_eV"] <= VERIFY_ENERGY_TOL):  # also fails on NaN
        raise RMError(f"{potential.directory}: export self-check failed, LAMMPS differs from "
                      f"MACECalculator by {diff}; report this as a bug")
    return diff


def finish_potential_dir(tmp: Path, out: Path, pot: Potential, header: list[str]) -> None:
    """Write ``tmp/potential.in`` (``header`` comment lines, then the LAMMPS commands that load
    ``pot``, with paths pointing into ``out``) and move the finished ``tmp`` to ``out``,
    replacing an older ``out``."""
    text = "\n".join(header + pair_commands(pot, core_repulsion=None)) + "\n"
    (tmp / "potential.in").write_text(text)
    for path in tmp.rglob("potential.in"):  # a nested potential (a teacher) points into tmp too
        path.write_text(path.read_text().replace(str(tmp.resolve()), str(out.resolve())))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def export_potential(model: str | os.PathLike, out: str | os.PathLike, *,
                     training: str | os.PathLike | None = None, backend: str = "mace",
                     verify: bool = True, overwrite: bool = False) -> Potential:
    """Turn a ``mace_run_train`` model into a potential directory ``out`` and check it.

    ``training``: the training extxyz (rmdata output) for per-element volumes; without it
    the covalent-radius fallback is used. The directory is built beside ``out`` and
    renamed into place only after the self-check passed, so a failed export leaves
    nothing half-written.
    """
    from rmsearch.mace_model import load_mace_model

    if backend not in BACKENDS:
        raise RMError(f"backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    model = Path(model)
    out = Path(out)
    if out.exists() and not overwrite:
        raise RMError(f"{out}: already exists; choose another --out or pass --overwrite")
    net = load_mace_model(model)
    from ase.data import chemical_symbols

    elements = [chemical_symbols[int(z)] for z in net.atomic_numbers]
    cutoff = float(net.r_max)
    del net
    if training is not None:
        from ase.io import read

        training = Path(training)
        if not training.is_file():
            raise RMError(f"{training}: training file not found (--training)")
        try:
            frames = read(training, index=":")
        except Exception as exc:  # ASE raises many types for unreadable files
            raise RMError(f"{training}: cannot read as extxyz ({type(exc).__name__}: {exc})") from exc
        volumes, source = fit_volumes(frames, elements)
    else:
        volumes = {e: covalent_volume(e) for e in elements}
        source = (f"covalent radii: no training set given ((4/3) pi r_cov^3 / {COVALENT_PACKING}); "
                  "pass --training for fitted volumes")
    log.info("per-element volumes %s (%s)", volumes, source)

    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        shutil.copyfile(model, tmp / "model.model")
        meta = {
            "format": FORMAT_VERSION,
            "backend": backend,
            "model": "model.model",
            "model_sha256": sha256_file(model),
            "model_source": str(model.resolve()),
            "elements": elements,
            "cutoff": cutoff,
            "pair_style": "zero 1.0",
            "pair_coeff": ["* *"],
            "callback": "mace",
            "volumes": volumes,
            "volumes_source": source,
            "training": str(Path(training).resolve()) if training is not None else None,
            "provenance": provenance({"model": str(model), "backend": backend,
                                      "training": str(training) if training else None}),
        }
        write_json_atomic(tmp / "potential.json", meta)
        pot = load_potential(tmp)
        if verify:
            meta["verification"] = verify_potential(pot)
            log.info("export self-check passed: %s", meta["verification"])
            write_json_atomic(tmp / "potential.json", meta)
        finish_potential_dir(tmp, out, pot, [
            "# LAMMPS commands that load this potential (rmsearch export); the mace backend",
            "# needs a Python callback set with lammps.set_fix_external_callback('rm_ext', ...),",
            "# which rmsearch.engine.LammpsEngine does."])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_potential(out)
