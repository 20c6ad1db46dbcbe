"""The dataset registry: where reference structures come from.

``rmdata datasets`` lists the entries. Each entry yields ``(source_id, Atoms)`` pairs:
crystals are periodic in all three directions, molecules in none.

- ``mp20``: the full MP-20 benchmark (CDVAE), downloaded from its public location into
  the cache (``$RMDATA_CACHE``), checksum recorded on first download and verified after.
- ``mp20-subset``: 847 train + 123 val rows of MP-20 shipped inside the package.
- ``qm7b``: QM7b (7211 molecules), downloaded; coordinates recovered from its Coulomb
  matrices (see :mod:`rmdata.molecules`).
- ``molecules``: 4,488 small molecules built offline with RDKit from a shipped SMILES list.
- ``diamond``, ``silicon``, ``nacl``: one-structure presets built with ASE.
- any ASE-readable file or folder through ``--input``.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from rmdata.errors import RMError, describe_exception

log = logging.getLogger(__name__)

#: Public location of the full MP-20 CSV files (CDVAE repository); override the base
#: URL with ``$RMDATA_MP20_URL`` (e.g. a mirror or a local server).
MP20_BASE_URL = "https://raw.githubusercontent.com/txie-93/cdvae/main/data/mp_20"
MP20_SPLITS = {"train": 27136, "val": 9047, "test": 9046}
#: Pinned checksums of the full MP-20 files; None means trust on first use (recorded
#: beside the cached file and verified on every later use).
MP20_SHA256: dict[str, str | None] = {"train": None, "val": None, "test": None}
#: sha256 of the shipped subset files (the uncompressed CSVs in ../shared/data).
MP20_SUBSET_SHA256 = {
    "train": "88e85ab73e67053de2054063efb6241ccd0c3c175315fb91c282dbb7a2e75584",
    "val": "aa1908f49931664150ffa996b6a955f948f8622e482d4f61eec6f6e134fddda6",
}


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry.

    Attributes:
        name: registry key (``--dataset NAME``).
        kind: ``"crystal"`` or ``"molecule"``; picks the default preset.
        size: human-readable size.
        source: where the structures come from.
        licence: licence of the data.
        splits: available splits (empty: one set).
        preset: name of the default label preset (see :mod:`rmdata.presets`).
    """

    name: str
    kind: str
    size: str
    source: str
    licence: str
    splits: tuple[str, ...] = ()
    preset: str = "crystal"
    loader: Callable[..., Iterator[tuple[str, Atoms]]] | None = field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------------------
# MP-20


def parse_cif_row(source_id: str, cif: str) -> Atoms:
    """Parse one MP-20 CIF with pymatgen; a one-line :class:`RMError` names the row on failure."""
    numbers, positions, cell = parse_cif_arrays(source_id, cif)
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)


def parse_cif_arrays(source_id: str, cif: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atomic numbers, Cartesian positions (A) and cell rows (A) of one CIF, parsed by pymatgen.

    MP-20 rows are ordered P1 CIFs written by pymatgen; those take :func:`_p1_arrays`
    (4x faster, identical results, checked on every shipped row by the tests). Every other
    CIF goes through pymatgen's ``CifParser`` (all symmetry operations, site merging), and
    the result is taken straight from the ``Structure`` (not ``AseAtomsAdaptor``, which also
    converts site properties MP-20 rows do not have).
    """
    from pymatgen.io.cif import CifParser

    try:
        fast = _p1_arrays(cif or "")
    except Exception:  # noqa: BLE001 - anything odd goes to the full parser, which reports it
        fast = None
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # check_cif (a second parse to compare formulas) costs ~25% of the time and adds
            # nothing for pymatgen-written CIFs; validate_reference checks every structure
            parsed = CifParser.from_str(cif or "", check_cif=False).parse_structures(primitive=False)
            if not parsed:
                raise ValueError("no structure in the CIF")
            structure = parsed[0]
            if not structure.is_ordered:
                raise ValueError("partial occupancies (a disordered structure)")
            numbers = np.array(structure.atomic_numbers, dtype=int)
            positions = np.array(structure.cart_coords, dtype=float)
            cell = np.array(structure.lattice.matrix, dtype=float)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types on bad CIFs
        reason = str(exc).splitlines()[0][:80] if str(exc) else ""
        raise RMError(f"{source_id}: unreadable CIF ({type(exc).__name__}: {reason})") from exc
    return numbers, positions, cell


def _p1_arrays(cif: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The structure of an ordered P1 CIF read with pymatgen's CIF reader (``CifFile``),
    without ``CifParser``'s general symmetry machinery; None when the CIF is anything else.

    Reproduces ``CifParser(...).parse_structures(primitive=False)[0]``: the lattice from
    ``Lattice.from_parameters``, coordinates within a relative 1e-4 of 1/3 or 2/3 set to
    those fractions, fractional coordinates wrapped into [0, 1), and the sites in
    pymatgen's default order (a stable sort by electronegativity, then symbol).
    """
    from pymatgen.core import Element, Lattice
    from pymatgen.io.cif import CifFile

    blocks = list(CifFile.from_str(cif).data.values())
    if len(blocks) != 1:
        return None
    d = blocks[0].data
    ops = d.get("_symmetry_equiv_pos_as_xyz", d.get("_space_group_symop_operation_xyz"))
    if isinstance(ops, str):
        ops = [ops]
    if not ops or [o.replace(" ", "").lower() for o in ops] != ["x,y,z"]:
        return None
    symbols = d.get("_atom_site_type_symbol")
    if not symbols or isinstance(symbols, str):
        return None
    occupancy = d.get("_atom_site_occupancy", ["1"] * len(symbols))
    if len(occupancy) != len(symbols) or any(float(o) != 1.0 for o in occupancy):
        return None
    if not all(Element.is_valid_symbol(sym) for sym in symbols):
        return None  # oxidation states, labels: leave them to CifParser
    frac = np.array([[float(v) for v in d[f"_atom_site_fract_{k}"]] for k in "xyz"]).T
    if frac.shape != (len(symbols), 3):
        return None
    params = [float(d[f"_cell_length_{k}"]) for k in "abc"] + \
        [float(d[f"_cell_angle_{k}"]) for k in ("alpha", "beta", "gamma")]
    lattice = Lattice.from_parameters(*params)
    for ideal in (1 / 3, 2 / 3):  # CifParser's rounding of 0.3333 or 0.6667 to 1/3 or 2/3
        frac[np.abs(frac / ideal - 1.0) <= 1e-4] = ideal
    frac = np.mod(frac, 1.0)
    elements = [Element(sym) for sym in symbols]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns when an element has no electronegativity
        x = np.array([el.X for el in elements])
    if not np.isfinite(x).all():
        return None  # noble gases have no electronegativity: pymatgen's order is undefined
    order = sorted(range(len(symbols)), key=lambda i: (x[i], symbols[i]))
    numbers = np.array([elements[i].Z for i in order], dtype=int)
    cell = np.array(lattice.matrix, dtype=float)
    return numbers, frac[order] @ cell, cell


def iter_mp20_csv(text_stream, origin: str, bad: list[str], lazy: bool = False
                  ) -> Iterator[tuple[str, Atoms | str]]:
    """MP-20 CSV rows (``material_id``, ``cif`` columns) as ``(material_id, Atoms)``.

    A row whose CIF cannot be parsed is reported (material id and reason) in ``bad`` and
    skipped. With ``lazy`` the CIF text is yielded unparsed (parse it with
    :func:`parse_cif_row`, e.g. in a worker process).
    """
    csv.field_size_limit(1 << 24)
    reader = csv.DictReader(text_stream)
    if reader.fieldnames is None or not {"material_id", "cif"} <= set(reader.fieldnames):
        raise RMError(f"{origin}: not an MP-20 CSV (needs the columns 'material_id' and 'cif')")
    for lineno, row in enumerate(reader, 2):
        mid = row.get("material_id") or f"{origin}:row{lineno}"
        if lazy:
            yield mid, row.get("cif") or ""
            continue
        try:
            yield mid, parse_cif_row(mid, row.get("cif") or "")
        except RMError as exc:
            log.warning("%s: %s", origin, exc)
            bad.append(f"{origin}: {exc}")


def _parse_rows(rows: list[tuple[str, str]], workers: int) -> list[tuple[str, Atoms | str]]:
    """Parse CIF rows, in parallel when ``workers > 1``; failures come back as messages."""
    if workers > 1 and len(rows) > 64:
        from rmdata.utils import worker_pool

        with worker_pool(workers) as pool:
            parsed = pool.map(_parse_or_message, rows, chunksize=64)
    else:
        parsed = [_parse_or_message(row) for row in rows]
    return [(mid, x if isinstance(x, str) else Atoms(numbers=x[0], positions=x[1], cell=x[2], pbc=True))
            for mid, x in parsed]


def _parse_or_message(row: tuple[str, str]) -> tuple[str, tuple | str]:
    try:
        return row[0], parse_cif_arrays(*row)
    except RMError as exc:
        return row[0], str(exc)


def mp20_structures(stream, origin: str, key: str, bad: list[str], workers: int = 1
                    ) -> list[tuple[str, Atoms]]:
    """All structures of an MP-20 CSV, parsed once and cached.

    Parsing 27,136 CIFs with pymatgen takes minutes on one core, so the parsed structures
    (and the list of unreadable rows) are kept in ``<cache>/parsed/<key>.h5``, where
    ``key`` is the CSV's sha256; later runs load them in a fraction of a second.
    """
    from rmdata.download import cache_dir

    path = cache_dir() / "parsed" / f"{key}.h5"
    cached = _load_parsed(path)
    if cached is None:
        rows = list(iter_mp20_csv(stream, origin, bad, lazy=True))
        parsed = _parse_rows(rows, workers)
        good = [(mid, a) for mid, a in parsed if isinstance(a, Atoms)]
        problems = [f"{origin}: {msg}" for _, msg in parsed if isinstance(msg, str)]
        try:
            _store_parsed(path, good, problems)
        except OSError as exc:  # a read-only cache must not stop the work
            log.warning("could not cache parsed structures in %s: %s", path, exc)
        cached = good, problems
    good, problems = cached
    for msg in problems:
        log.warning(msg)
    bad.extend(problems)
    return good


def _store_parsed(path: Path, items: list[tuple[str, Atoms]], problems: list[str]) -> None:
    import h5py

    from rmdata.utils import atomic_output

    n_atoms = np.array([len(a) for _, a in items], dtype=np.int32)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as h5:
        text = h5py.string_dtype("utf-8")
        h5["ids"] = np.array([mid for mid, _ in items], dtype=text)
        h5["n_atoms"] = n_atoms
        h5["numbers"] = np.concatenate([a.numbers for _, a in items]).astype(np.int16)
        h5["positions"] = np.concatenate([a.positions for _, a in items])
        h5["cells"] = np.array([a.cell.array for _, a in items])
        h5["problems"] = np.array(problems, dtype=text)


def _load_parsed(path: Path) -> tuple[list[tuple[str, Atoms]], list[str]] | None:
    import h5py

    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as h5:
            ids = [_decode(x) for x in h5["ids"][()]]
            n_atoms, numbers = h5["n_atoms"][()], h5["numbers"][()]
            positions, cells = h5["positions"][()], h5["cells"][()]
            problems = [_decode(x) for x in h5["problems"][()]]
    except (OSError, KeyError) as exc:
        log.warning("ignoring unreadable cache %s (%s)", path, exc)
        return None
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    items = [(mid, Atoms(numbers=numbers[s:e], positions=positions[s:e], cell=cells[k], pbc=True))
             for k, (mid, s, e) in enumerate(zip(ids, starts[:-1], starts[1:]))]
    return items, problems


def _decode(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _mp20_subset(split: str | None, bad: list[str], lazy: bool = False, workers: int = 1,
                 **_) -> Iterator[tuple[str, Atoms]]:
    split = split or "train"
    if split not in MP20_SUBSET_SHA256:
        raise RMError(f"--split {split}: mp20-subset has no such split; use one of: train, val "
                      "(the test split needs the full mp20 download)")
    ref = resources.files("rmdata") / "data" / f"mp20_subset_{split}.csv.gz"
    with ref.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8", newline="") as fh:
        if lazy:
            yield from iter_mp20_csv(fh, f"mp20-subset:{split}", bad, lazy=True)
            return
        yield from mp20_structures(fh, f"mp20-subset:{split}", MP20_SUBSET_SHA256[split], bad, workers)


def mp20_url(split: str) -> str:
    """Download URL of one MP-20 split."""
    base = os.environ.get("RMDATA_MP20_URL", MP20_BASE_URL).rstrip("/")
    return f"{base}/{split}.csv"


def download_mp20(split: str, cache: Path | None = None) -> Path:
    """The cached CSV of one MP-20 split, downloading it when missing."""
    from rmdata.download import cache_dir, fetch

    if split not in MP20_SPLITS:
        raise RMError(f"--split {split}: mp20 has no such split; use one of: {', '.join(MP20_SPLITS)}")
    dest = (cache or cache_dir()) / "mp20" / f"{split}.csv"
    return fetch(mp20_url(split), dest, sha256=MP20_SHA256.get(split), name=f"mp20 {split}",
                 offline_hint="no network? use --dataset mp20-subset, which ships with rmdata")


def _mp20(split: str | None, bad: list[str], lazy: bool = False, workers: int = 1,
          **_) -> Iterator[tuple[str, Atoms]]:
    from rmdata.utils import sha256_file

    split = split or "train"
    path = download_mp20(split)
    with open(path, encoding="utf-8", newline="") as fh:
        if lazy:
            yield from iter_mp20_csv(fh, f"mp20:{split}", bad, lazy=True)
            return
        yield from mp20_structures(fh, f"mp20:{split}", sha256_file(path), bad, workers)


# ---------------------------------------------------------------------------------------
# one-structure presets and molecules


def _one(name: str, builder: Callable[[], Atoms]) -> Callable[..., Iterator[tuple[str, Atoms]]]:
    def load(split=None, bad=None, **_):
        if split not in (None, "train", "all"):
            raise RMError(f"--split {split}: dataset {name} is a single structure without splits; drop --split")
        yield name, builder()

    return load


def _diamond() -> Atoms:
    from ase.build import bulk

    return bulk("C", "diamond", a=3.567, cubic=True)


def _silicon() -> Atoms:
    from ase.build import bulk

    return bulk("Si", "diamond", a=5.431, cubic=True)


def _nacl() -> Atoms:
    from ase.build import bulk

    return bulk("NaCl", "rocksalt", a=5.64, cubic=True)


def _molecules(split=None, bad=None, limit=None, seed=0, **_) -> Iterator[tuple[str, Atoms]]:
    from rmdata.molecules import iter_molecules

    for atoms in iter_molecules(limit=limit, seed=seed):
        yield atoms.info["source_id"], atoms


def _qm7b(split=None, bad=None, **_) -> Iterator[tuple[str, Atoms]]:
    from rmdata.molecules import load_qm7b

    for atoms in load_qm7b():
        yield atoms.info["source_id"], atoms


REGISTRY: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo("mp20", "crystal", "45,229 crystals (27,136 train / 9,047 val / 9,046 test), <= 20 atoms",
                    "CDVAE MP-20 (Materials Project), downloaded", "MIT (CDVAE); MP data CC-BY-4.0",
                    ("train", "val", "test"), "crystal", _mp20),
        DatasetInfo("mp20-subset", "crystal", "970 crystals (847 train / 123 val)",
                    "MP-20 subset shipped with rmdata", "MIT (CDVAE); MP data CC-BY-4.0",
                    ("train", "val"), "crystal", _mp20_subset),
        DatasetInfo("qm7b", "molecule", "7,211 molecules, <= 7 heavy atoms (C, N, O, S, Cl)",
                    "QM7b (Blum & Reymond 2009; Montavon et al. 2013), downloaded", "CC-BY (quantum-machine.org)",
                    (), "molecule", _qm7b),
        DatasetInfo("molecules", "molecule", "4,488 small molecules, <= 7 heavy atoms (C, N, O, S, Cl)",
                    "built offline with RDKit (ETKDG + MMFF94) from a shipped SMILES list", "MIT",
                    (), "molecule", _molecules),
        DatasetInfo("diamond", "crystal", "1 structure (8-atom cubic diamond, a = 3.567 A)", "ase.build.bulk",
                    "MIT", (), "diamond", _one("diamond", _diamond)),
        DatasetInfo("silicon", "crystal", "1 structure (8-atom cubic Si, a = 5.431 A)", "ase.build.bulk",
                    "MIT", (), "crystal", _one("silicon", _silicon)),
        DatasetInfo("nacl", "crystal", "1 structure (8-atom rocksalt NaCl, a = 5.64 A)", "ase.build.bulk",
                    "MIT", (), "crystal", _one("nacl", _nacl)),
    ]
}


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry ``name`` (one-line error listing the valid names)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise RMError(f"unknown dataset {name!r}; use one of: {', '.join(REGISTRY)} "
                      "(or --input FILE)") from None


# ---------------------------------------------------------------------------------------
# any ASE-readable file or folder

#: Structure files that are not text (ASE database, trajectory).
BINARY_SUFFIXES = (".db", ".traj")
INPUT_SUFFIXES = (".xyz", ".extxyz", ".h5", ".hdf5", ".cif", ".vasp", ".poscar", ".db", ".traj", ".json", ".pdb", ".res")


def iter_input(path: str | os.PathLike, bad: list[str]) -> Iterator[tuple[str, Atoms]]:
    """Structures from an ASE-readable file (extxyz, CIF, POSCAR, ASE db, ...) or a folder of them."""
    import ase.io

    path = Path(path)
    if not path.exists():
        raise RMError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (
            p.suffix.lower() in INPUT_SUFFIXES or p.name.upper().startswith(("POSCAR", "CONTCAR"))))
        if not files:
            raise RMError(f"{path}: folder holds no structure files ({', '.join(INPUT_SUFFIXES)}, POSCAR)")
    else:
        files = [path]
    for file in files:
        if file.stat().st_size == 0:
            raise RMError(f"{file}: the file is empty")
        structures = _read_structures(file)
        if not isinstance(structures, list):
            structures = [structures]
        if not structures:
            raise RMError(f"{file}: no structures in the file")
        for i, atoms in enumerate(structures):
            sid = file.name if len(structures) == 1 else f"{file.name}:{i}"
            yield sid, _strip_labels(atoms)


def _read_structures(file: Path) -> list[Atoms] | Atoms:
    """All structures of one file: rmdata's own HDF5, else whatever ASE reads.

    Two atoms of a CIF on one site (which ASE merges into one, with a warning) and
    files ASE cannot parse give a one-line :class:`RMError` naming the file.
    """
    import ase.io

    from rmdata.io import H5_SUFFIXES, check_text_file, read

    if file.suffix.lower() in H5_SUFFIXES:
        return read(file)
    if file.suffix.lower() not in BINARY_SUFFIXES:
        check_text_file(file)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            structures = ase.io.read(file, index=":")
    except Exception as exc:  # noqa: BLE001 - ASE raises many types on malformed files
        raise RMError(f"{file}: cannot read structures ({describe_exception(exc)}); check that it is "
                      "a complete file in a format ASE reads (extxyz, CIF, POSCAR, ...)") from exc
    for w in caught:
        if "are equivalent" in str(w.message):
            raise RMError(f"{file}: two atoms on one site ({str(w.message).splitlines()[0][:120]}); "
                          "fix the structure") from None
    if file.suffix.lower() == ".cif":
        _check_cif_sites(file)
    return structures


def _check_cif_sites(file: Path) -> None:
    """One-line RMError if two rows of a CIF's atom-site loop sit on one site (ASE would
    merge them into one atom, or keep one of them, without a word)."""
    from ase.io.cif import parse_cif

    try:
        blocks = list(parse_cif(str(file)))
    except Exception:  # noqa: BLE001 - ase.io.read parsed the file; nothing more to check
        return
    for block in blocks:
        try:
            xyz = np.array([block.get(f"_atom_site_fract_{c}") for c in "xyz"], dtype=float).T
        except (TypeError, ValueError):
            continue
        if xyz.ndim != 2 or len(xyz) < 2:
            continue
        if not np.all(np.isfinite(xyz)):
            raise RMError(f"{file}: an atom-site coordinate is not a finite number; fix the structure")
        d = xyz[:, None, :] - xyz[None, :, :]
        d -= np.round(d)
        i, j = np.nonzero(np.triu(np.linalg.norm(d, axis=2) < 1e-4, k=1))
        if len(i):
            labels = block.get("_atom_site_label") or list(range(len(xyz)))
            raise RMError(f"{file}: atom-site rows {labels[i[0]]} and {labels[j[0]]} are on one site; rmdata "
                          "needs an ordered structure with one atom per site; fix the structure")


def _strip_labels(atoms: Atoms) -> Atoms:
    """A bare copy of a reference structure (no calculator, no stale labels)."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return out


# ---------------------------------------------------------------------------------------
# validation


MIN_SEPARATION_A = 0.5
#: Sane bounds of a reference structure (A): shortest and longest lattice vector, and the
#: largest span of a molecule; a cell with volume / (|a||b||c|) below the flatness bound
#: is degenerate (angles near 0 or 180 degrees).
MIN_CELL_LENGTH_A, MAX_LENGTH_A, MIN_CELL_FLATNESS = 1.0, 1000.0, 0.01


def validate_reference(atoms: Atoms, origin: str, need_stress: bool) -> None:
    """Check a reference structure; raise a one-line :class:`RMError` naming ``origin``.

    Checks: known elements, finite coordinates of sane size, all-or-nothing periodicity,
    for crystals a cell of positive volume with lattice vectors of 1-1000 A that is not
    flat, for molecules a span below 1000 A, no two atoms closer than 0.5 A (a duplicated
    site), and no stress requested for a non-periodic molecule.
    """
    numbers = atoms.numbers
    if len(numbers) == 0:
        raise RMError(f"{origin}: structure has no atoms")
    if np.any(numbers <= 0) or np.any(numbers >= len(chemical_symbols)):
        raise RMError(f"{origin}: unknown element (atomic number {numbers.min()}..{numbers.max()})")
    if not np.all(np.isfinite(atoms.positions)):
        raise RMError(f"{origin}: positions contain NaN or infinity")
    pbc = atoms.pbc
    if pbc.any() and not pbc.all():
        raise RMError(f"{origin}: periodic in some directions only (pbc={pbc.tolist()}); "
                      "rmdata handles bulk crystals (all periodic) and molecules (none)")
    if np.abs(atoms.positions).max() > MAX_LENGTH_A * 10:
        raise RMError(f"{origin}: coordinates up to {np.abs(atoms.positions).max():.3g} A; "
                      "are they in Angstrom?")
    if pbc.all():
        cell = atoms.cell.array
        volume = abs(np.linalg.det(cell)) if np.all(np.isfinite(cell)) else 0.0
        if not volume > 1e-6:
            raise RMError(f"{origin}: periodic structure with zero or invalid cell volume")
        lengths = np.linalg.norm(cell, axis=1)
        if lengths.min() < MIN_CELL_LENGTH_A or lengths.max() > MAX_LENGTH_A:
            raise RMError(f"{origin}: lattice vector lengths {np.round(lengths, 3).tolist()} A outside "
                          f"{MIN_CELL_LENGTH_A}-{MAX_LENGTH_A} A; check the cell")
        if volume / np.prod(lengths) < MIN_CELL_FLATNESS:
            raise RMError(f"{origin}: nearly flat cell (volume {volume:.3g} A^3 for lattice vectors of "
                          f"{np.round(lengths, 3).tolist()} A); check the cell angles")
    elif np.ptp(atoms.positions, axis=0).max() > MAX_LENGTH_A:
        raise RMError(f"{origin}: molecule spans {np.ptp(atoms.positions, axis=0).max():.3g} A "
                      f"(more than {MAX_LENGTH_A} A); are the coordinates in Angstrom?")
    if not pbc.all() and need_stress:
        raise RMError(f"{origin}: stress/strain labels need a periodic cell, but this structure is a "
                      "non-periodic molecule; drop --strains or use a crystal")
    if len(atoms) > 1:
        from matscipy.neighbours import neighbour_list

        cell = atoms.cell.array if pbc.all() else np.eye(3) * (np.ptp(atoms.positions, axis=0).max() + 10)
        i, j, d = neighbour_list("ijd", positions=atoms.positions, cell=cell, pbc=pbc,
                                 cutoff=MIN_SEPARATION_A)
        if len(i):
            k = int(np.argmin(d))
            raise RMError(f"{origin}: atoms {i[k]} and {j[k]} are {d[k]:.3f} A apart (closer than "
                          f"{MIN_SEPARATION_A} A): a duplicated site? fix the structure")


def load_structures(dataset: str | None = None, input_path: str | os.PathLike | None = None,
                    split: str | None = None, bad: list[str] | None = None, seed: int = 0,
                    limit: int | None = None, lazy: bool = False, workers: int = 1
                    ) -> Iterator[tuple[str, Atoms | str]]:
    """Yield ``(source_id, Atoms)`` reference structures from a dataset or a file/folder.

    Unreadable rows of a dataset are recorded in ``bad`` and skipped. With ``lazy``,
    CIF-based datasets yield the CIF text instead (see :func:`parse_cif_row`); otherwise
    they are parsed once (with ``workers`` processes) and cached.
    """
    if (dataset is None) == (input_path is None):
        raise RMError("give exactly one of --dataset NAME and --input PATH")
    bad = bad if bad is not None else []
    if input_path is not None:
        if not Path(input_path).exists():
            raise RMError(f"{input_path}: no such file or folder")
        return iter_input(input_path, bad)
    info = get_dataset(dataset)  # checked now, not when the first structure is asked for
    if split not in (None, "all") and info.splits and split not in info.splits:
        raise RMError(f"--split {split}: {dataset} has no such split; use one of: {', '.join(info.splits)}")
    return info.loader(split=split, bad=bad, seed=seed, limit=limit, lazy=lazy, workers=workers)


def describe_datasets() -> str:
    """A text table of the registry (``rmdata datasets``)."""
    lines = [f"{'name':<12} {'kind':<9} {'size':<62} source / licence"]
    for d in REGISTRY.values():
        lines.append(f"{d.name:<12} {d.kind:<9} {d.size:<62} {d.source}; {d.licence}")
    return "\n".join(lines)

