"""``rmdata make``: reference structures -> noisy frames -> response labels -> a dataset file.

Each reference structure gets its own random stream ``default_rng([seed, index])``, so
the output depends only on the inputs and the seed (not on ``workers``): same seed, same
bytes. Work is spread over worker processes (CIF parsing included); results are written
in input order by the parent as they arrive, so memory stays flat.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from rmdata.datasets import get_dataset, load_structures, validate_reference
from rmdata.errors import RMError, describe_exception
from rmdata.io import FrameBatch, format_for, open_writer
from rmdata.perturb import perturb
from rmdata.presets import Preset, get_preset
from rmdata.response import compute_labels
from rmdata.utils import pin_threads, provenance, sha256_file, worker_pool

log = logging.getLogger(__name__)


@dataclass
class MakeSummary:
    """What ``make_dataset`` did."""

    output: Path
    n_structures: int = 0
    n_frames: int = 0
    n_atoms_total: int = 0
    skipped: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    elements: list[str] = field(default_factory=list)
    preset: str = ""


def label_structure(atoms: Atoms, preset: Preset, rng: np.random.Generator, source_id: str) -> FrameBatch:
    """All noisy, labelled frames of one reference structure."""
    frames = perturb(atoms, preset.noise, rng)
    labels = compute_labels(frames.positions, frames.cells, frames.pbc, frames.ref_scaled,
                            frames.ref_cell, preset.labels)
    cells = frames.cells if frames.pbc.any() else np.zeros_like(frames.cells)
    config_type = preset.config_type if frames.pbc.any() else "rm_molecule"
    return FrameBatch(atoms.numbers, frames.positions, cells, frames.pbc, labels.forces, labels.stress,
                      labels.pseudo_energy, frames.noise_level, frames.strain, config_type, source_id)


# ---------------------------------------------------------------------------------------
# worker side

_STATE: dict[str, Any] = {}


def _init_worker(presets: dict[str, Preset], seed: int, strict: bool, explicit_strains: bool) -> None:
    if mp.parent_process() is not None:  # a pool worker: the parent handles Ctrl-C and SIGTERM
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    pin_threads(1)
    _STATE.update(presets=presets, seed=seed, strict=strict, explicit_strains=explicit_strains)


def _kind(atoms: Atoms) -> str:
    """Which preset labels ``atoms``: ``"crystal"`` when periodic, else ``"molecule"``."""
    return "crystal" if atoms.pbc.any() else "molecule"


def _work(task: tuple[int, str, Atoms]) -> tuple[int, str, FrameBatch | None, str | None]:
    """Label one reference; returns (index, source_id, batch or None, problem or None)."""
    index, source_id, atoms = task
    try:
        validate_reference(atoms, source_id, need_stress=_STATE["explicit_strains"] and not atoms.pbc.any())
    except RMError as exc:
        if _STATE["strict"]:
            raise
        return index, source_id, None, str(exc)
    preset = _STATE["presets"][_kind(atoms)]
    rng = np.random.default_rng([_STATE["seed"], index])
    return index, source_id, label_structure(atoms, preset, rng, source_id), None


def _results(tasks: Iterator[tuple[int, str, Atoms]], workers: int, init_args: tuple
             ) -> Iterator[tuple[int, str, FrameBatch | None, str | None]]:
    if workers <= 1:
        _init_worker(*init_args)
        for task in tasks:
            yield _work(task)
        return
    # The pool's feeder thread runs the task generator; take its first item here, in the main
    # thread, so that the loaders' lazy imports (ase.build, pymatgen, ...) happen here. A
    # Ctrl-C or SIGTERM that lands inside an import can leave that module's import lock held,
    # and a feeder thread importing the same module would then never finish.
    tasks = iter(tasks)
    first = next(tasks, None)
    if first is None:
        return
    with worker_pool(workers, _init_worker, init_args) as pool:
        yield from pool.imap(_work, itertools.chain([first], tasks), chunksize=8)


# ---------------------------------------------------------------------------------------
# driver


def resolve_presets(dataset: str | None, preset: str | None, overrides: dict[str, Any]) -> dict[str, Preset]:
    """The crystal and molecule presets to use, with CLI overrides applied."""
    if preset is not None:
        base = get_preset(preset)
        chosen = {"crystal": base, "molecule": base}
    else:
        crystal = get_dataset(dataset).preset if dataset is not None else "crystal"
        if crystal == "molecule":
            crystal = "crystal"
        chosen = {"crystal": get_preset(crystal), "molecule": get_preset("molecule")}
    return {kind: p.with_overrides(**overrides) for kind, p in chosen.items()}


def make_dataset(output: str | os.PathLike, dataset: str | None = None, input_path: str | None = None, *,
                 fmt: str | None = None, preset: str | None = None, split: str | None = None,
                 limit: int | None = None, seed: int = 0, workers: int = 1,
                 elements: list[str] | None = None, containing: list[str] | None = None,
                 exclude_formulas: list[str] | None = None, also_stoichiometry: list[str] | None = None,
                 k: float | None = None,
                 levels: list[float] | None = None, step_size: float | None = None,
                 strains: list[float] | None = None, rc: float | None = None, copies: int | None = None,
                 youngs: float | None = None, raw_labels: bool = False,
                 progress: bool = False) -> MakeSummary:
    """Write a response-matched dataset (extxyz or HDF5) from a dataset or an input file.

    Args:
        output: output path; the format comes from ``fmt`` or the suffix.
        dataset: registry name (``rmdata datasets``), or None with ``input_path``.
        input_path: any ASE-readable file or folder.
        preset: ``molecule``/``crystal``/``diamond``; default from the dataset.
        split: dataset split (``train``, ``val``, ``test``).
        limit: use at most this many reference structures.
        seed: random seed; same seed, same bytes.
        workers: processes for labelling (1 = in this process).
        elements: keep only structures whose elements are all in this list.
        containing: keep only structures that contain at least one of these elements.
        exclude_formulas: drop every structure of these compositions (see
            :func:`composition_key`: every polymorph of a crystal formula, every isomer of a
            molecular formula), to hold compositions out of training.
        also_stoichiometry: also keep every structure of these anonymous stoichiometries
            (:func:`anonymous_formula`, e.g. ``AB2``: Li2S, SiO2, CaF2) that ``elements`` or
            ``containing`` would drop: a chemical-system set plus the known prototypes of
            the stoichiometry in question. ``exclude_formulas`` and ``limit`` still apply.
        k: spring constant (eV/A^2); levels, step_size (A), strains, rc (A), copies,
            youngs (Young's modulus of the stress labels, eV/A^3): override the preset
            (DESIGN §2).
        raw_labels: keep the rigid-motion part of the labels (reference-code labels).
        progress: show a progress bar.
    """
    start = time.perf_counter()
    output = Path(output)
    fmt = format_for(output, fmt)
    if input_path is not None and Path(input_path).exists() and (
            output.resolve() == Path(input_path).resolve()
            or (output.exists() and os.path.samefile(output, input_path))):
        raise RMError(f"{output}: that is the input file; choose another output name "
                      "(inputs are never overwritten)")
    overrides = dict(k=k, levels=levels, step_size=step_size, strains=strains, rc=rc, copies=copies,
                     youngs=youngs, raw=True if raw_labels else None)
    presets = resolve_presets(dataset, preset, overrides)
    keep = set(elements) if elements else None
    need = set(containing) if containing else None
    from ase.data import chemical_symbols

    for option, given in (("--elements", keep), ("--containing", need)):
        unknown = sorted((given or set()) - set(chemical_symbols[1:]))
        if unknown:
            raise RMError(f"{option}: unknown element(s) {', '.join(unknown)}")
    excluded = {composition_key(f, periodic) for f in exclude_formulas or () for periodic in (True, False)}
    stoichiometries = set()
    for f in also_stoichiometry or ():
        try:
            anonymous = anonymous_formula(f)
        except RMError as exc:
            raise RMError(f"--also-stoichiometry: {exc}; give anonymous formulas such as AB2 or A2B3") from None
        if anonymous != f:
            raise RMError(f"--also-stoichiometry {f}: not an anonymous formula (it reads as {anonymous}); "
                          "give letters from A in order, smallest count first, e.g. AB2 or AB3C")
        stoichiometries.add(anonymous)
    bad: list[str] = []
    strict = input_path is not None
    source = _source_record(dataset, input_path, split)
    config = {"dataset": dataset, "input": str(input_path) if input_path else None, "split": split,
              "limit": limit, "elements": sorted(keep) if keep else None,
              "source": source,
              "presets": {kind: _preset_dict(p) for kind, p in presets.items()}}
    if need:
        config["containing"] = sorted(need)
    if exclude_formulas:
        config["exclude_formulas"] = sorted(excluded)
    if stoichiometries:
        config["also_stoichiometry"] = sorted(stoichiometries)
    if input_path is None:  # a registry dataset holds one kind: refuse its noise before any download
        presets[get_dataset(dataset).kind].check_amplitude()
    summary = MakeSummary(output=output, preset=presets["crystal"].name)
    structures = load_structures(dataset, input_path, split=split, bad=bad, seed=seed,
                                 limit=None if (keep or need or excluded) else limit, workers=workers)
    tasks = _checked(_tasks(structures, keep, limit, need, excluded, stoichiometries), presets)
    init_args = (presets, seed, strict, strains is not None)
    seen_elements: set[int] = set()
    bar = _bar(progress, limit)
    with open_writer(output, provenance(config, seed), fmt) as writer:
        for _, source_id, batch, problem in _results(tasks, workers, init_args):
            if bar is not None:
                bar.update(1)
            if batch is None:
                bad.append(problem)
                log.warning(problem)
                continue
            writer.write(batch)
            summary.n_structures += 1
            summary.n_frames += len(batch)
            summary.n_atoms_total += batch.positions.shape[0] * batch.positions.shape[1]
            seen_elements.update(batch.numbers.tolist())
        if summary.n_frames == 0:
            raise RMError(f"no structures were labelled (skipped {len(bad)}); nothing written to {output}")
    if bar is not None:
        bar.close()
    from ase.data import chemical_symbols

    summary.elements = [chemical_symbols[z] for z in sorted(seen_elements)]
    summary.skipped = bad
    summary.elapsed_s = time.perf_counter() - start
    return summary


def default_output(dataset: str | None, input_path: str | os.PathLike | None, fmt: str | None = None) -> Path:
    """The output name when none is given: ``<dataset>.xyz`` or ``<input stem>.xyz`` (``.h5``
    with ``fmt="hdf5"``), ``<input stem>.rm.xyz`` where that would be the input itself."""
    suffix = ".h5" if fmt == "hdf5" else ".xyz"
    if dataset is not None or input_path is None:
        return Path(f"{dataset or 'dataset'}{suffix}")
    source = Path(str(input_path).rstrip("/") or "input")
    stem = source.stem or "input"
    out = Path(f"{stem}{suffix}")
    if out.resolve() == source.resolve() or (out.exists() and source.exists() and os.path.samefile(out, source)):
        out = Path(f"{stem}.rm{suffix}")
    return out


def composition_key(formula_or_atoms: str | Atoms, periodic: bool | None = None) -> str:
    """The composition a structure is held out by: the reduced formula of a crystal (every
    polymorph, any cell size), the molecular formula of a molecule (every isomer, but not
    its multiples: C4H8 is not C2H4), both in Hill order.

    ``periodic`` defaults to the structure's own periodicity; a formula string needs it.
    Raises :class:`RMError` for a formula ASE cannot read.
    """
    from ase.formula import Formula

    if isinstance(formula_or_atoms, Atoms):
        periodic = bool(formula_or_atoms.pbc.any()) if periodic is None else periodic
        formula = Formula.from_list(formula_or_atoms.get_chemical_symbols())
    else:
        try:
            formula = Formula(str(formula_or_atoms).strip())
            formula.count()
        except ValueError as exc:
            raise RMError(f"--exclude-formulas: cannot read formula {formula_or_atoms!r} "
                          f"({describe_exception(exc)}); give Hill formulas such as C3H6O or Li2S") from None
    if periodic:
        formula = formula.reduce()[0]
    return formula.format("hill")


def anonymous_formula(formula_or_atoms: str | Atoms) -> str:
    """The stoichiometry without the elements (pymatgen ``anonymized_formula``): ``"AB2"`` for
    Li2S, Li4S2 and SiO2. Raises :class:`RMError` for a formula pymatgen cannot read."""
    import warnings

    from pymatgen.core import Composition

    formula = formula_or_atoms if isinstance(formula_or_atoms, str) else formula_or_atoms.get_chemical_formula()
    with warnings.catch_warnings():  # pymatgen warns of noble gases without an electronegativity
        warnings.simplefilter("ignore", UserWarning)
        try:
            return Composition(formula).anonymized_formula
        except (ValueError, KeyError) as exc:
            raise RMError(f"cannot read formula {formula!r} ({describe_exception(exc)})") from None


def _tasks(structures, keep: set[str] | None, limit: int | None, need: set[str] | None = None,
           excluded: set[str] = frozenset(), stoichiometries: set[str] = frozenset()):
    """Number the reference structures, filtering by elements and compositions (a structure
    of one of ``stoichiometries`` passes the element filters), and apply the limit."""
    from ase.data import chemical_symbols

    n = 0
    for source_id, atoms in structures:
        if limit is not None and n >= limit:
            return
        symbols = {chemical_symbols[z] for z in atoms.numbers}
        chosen = (keep is None or symbols <= keep) and (need is None or symbols & need)
        if not chosen and not (stoichiometries and anonymous_formula(atoms) in stoichiometries):
            continue
        if excluded and composition_key(atoms) in excluded:
            continue
        yield n, source_id, atoms
        n += 1


def _checked(tasks, presets: dict[str, Preset]):
    """The tasks, with each preset's noise amplitude checked when its first structure comes
    (an input file of crystals may use levels a molecule's larger step would refuse)."""
    checked: set[str] = set()
    for task in tasks:
        kind = _kind(task[2])
        if kind not in checked:
            presets[kind].check_amplitude()
            checked.add(kind)
        yield task


def _bar(progress: bool, total: int | None):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="structure", desc="labelling", disable=None)


def _preset_dict(p: Preset) -> dict[str, Any]:
    from dataclasses import asdict

    return {"name": p.name, "noise": asdict(p.noise), "labels": asdict(p.labels),
            "config_type": p.config_type, "mace": p.mace}


def _source_record(dataset: str | None, input_path: str | None, split: str | None) -> dict[str, Any]:
    """Name and checksum of the data the set is built from."""
    if input_path is not None:
        path = Path(input_path)
        if path.is_file():
            return {"input": str(path), "sha256": sha256_file(path)}
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            return {"input": str(path), "sha256": {p.name: sha256_file(p) for p in files}}
        if path.exists():
            raise RMError(f"{path}: not a regular file or folder; give a structure file or a folder of them")
        raise RMError(f"{path}: no such file or folder")
    if dataset == "mp20-subset":
        from rmdata.datasets import MP20_SUBSET_SHA256

        return {"dataset": dataset, "split": split or "train",
                "sha256": MP20_SUBSET_SHA256.get(split or "train")}
    if dataset == "mp20":
        from rmdata.datasets import download_mp20

        path = download_mp20(split or "train")
        return {"dataset": dataset, "split": split or "train", "sha256": sha256_file(path)}
    return {"dataset": dataset}
