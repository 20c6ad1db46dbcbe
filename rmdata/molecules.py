"""Molecule datasets: ``molecules`` (offline, built with RDKit) and ``qm7b`` (downloaded).

``molecules``
    The small neutral closed-shell molecules listed in ``rmdata/data/molecules_smiles.txt``
    (at most 7 heavy atoms from C, N, O, S, Cl, plus H). Each is built with RDKit:
    hydrogens added, one ETKDGv3 conformer (seeded), MMFF94 minimisation.

``qm7b``
    QM7b (7,211 molecules from GDB-13; Blum & Reymond 2009, Montavon et al. 2013) is
    distributed as ``qm7b.mat`` holding Coulomb matrices ``X`` (7211, 23, 23) and 14
    properties ``T`` (7211, 14), but no coordinates. The Coulomb matrix is
    ``C_ii = 0.5 Z_i^2.4`` and ``C_ij = Z_i Z_j / |R_i - R_j|`` in atomic units (R in
    Bohr, as in QM7 of Rupp et al. 2012). The elements follow from the diagonal, the
    distances from the off-diagonal, and classical multidimensional scaling turns the
    distance matrix into Cartesian coordinates, exact up to a rotation and a reflection
    (so the handedness of chiral molecules is not recoverable).

Every structure is returned as a non-periodic ``ase.Atoms`` with a zero cell
(``pbc=False``), positions in A with their centroid at the origin, and
``info["source_id"]`` (``mol-0042``, ``qm7b-0042``: the 0-based index in the source list,
stable whatever is skipped); ``molecules`` also carry ``info["smiles"]`` (canonical RDKit
SMILES, hydrogens implicit).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.units import Bohr

from rmdata.errors import RMError

log = logging.getLogger(__name__)

ALLOWED_ELEMENTS = ("H", "C", "N", "O", "S", "Cl")
"""Elements of both molecule datasets."""
MAX_HEAVY_ATOMS = 7
"""Largest number of non-hydrogen atoms in a molecule of either dataset."""
SMILES_RESOURCE = "molecules_smiles.txt"

QM7B_URLS = (
    "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/qm7b.mat",
    "http://quantum-machine.org/data/qm7b.mat",
)
"""Public locations of ``qm7b.mat``, tried in order: the DeepChem dataset bucket that
torch_geometric's ``QM7b`` downloads from (https; the copy :data:`QM7B_SHA256` was taken
from) and the original quantum-machine.org data page (http)."""
QM7B_SHA256 = "e2a9d670d86eba769fa7b5eadeb592184067d2ec12468b1a220bfc38502dda61"
"""SHA-256 of ``qm7b.mat`` as pinned by GeometricFlux.jl's QM7b data dependency (DeepChem
copy). Not verified by rmdata's authors (no network where it was written); pass
``sha256=None`` to :func:`load_qm7b` to fall back to trust-on-first-use."""
QM7B_N_MOLECULES = 7211
QM7B_CM_EXPONENT = 2.4
"""Exponent of the Coulomb-matrix diagonal, ``C_ii = 0.5 Z_i^2.4``."""
QM7B_MAX_ERROR_A = 1e-4
"""Default largest tolerated |d_recovered - d| (A) of the 3D reconstruction of a molecule."""
_CH_BOND_RANGE_A = (1.0, 1.2)


# ---------------------------------------------------------------------------------------
# molecules: RDKit from the shipped SMILES list


def read_smiles_list(path: str | os.PathLike | None = None) -> list[str]:
    """The SMILES strings of a list file, one per line; ``#`` comments and blank lines skipped.

    Args:
        path: a SMILES list file; None reads the list shipped with rmdata.
    """
    if path is None:
        text = resources.files("rmdata").joinpath("data", SMILES_RESOURCE).read_text(encoding="utf-8")
        origin = f"rmdata/data/{SMILES_RESOURCE}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RMError(f"{path}: cannot read the SMILES list ({exc.strerror or exc})") from exc
        origin = str(path)
    smiles = [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not smiles:
        raise RMError(f"{origin}: no SMILES in the file; give one SMILES per line")
    return smiles


class _EmbeddingError(RMError):
    """ETKDG found no 3D embedding of a valid molecule."""


def _rdkit_mol(smiles: str):
    """Sanitised RDKit molecule of ``smiles`` (RMError if RDKit cannot parse it)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise RMError(f"SMILES {smiles!r}: RDKit cannot parse or sanitise it; fix the SMILES")
    return mol


def molecule_from_smiles(smiles: str, seed: int = 0, max_iters: int = 2000) -> Atoms:
    """Build one molecule in 3D: add hydrogens, embed with ETKDGv3, minimise with MMFF94.

    Deterministic for a given ``seed`` on a given machine and RDKit version. Molecules
    without MMFF94 parameters are minimised with UFF instead (``info["forcefield"]`` says
    which).

    Args:
        smiles: SMILES string (hydrogens may be implicit).
        seed: ETKDG random seed (non-negative).
        max_iters: force-field minimisation steps per attempt (up to 5 attempts).

    Returns:
        Non-periodic ``Atoms`` (zero cell), positions in A centred on their centroid,
        ``info["smiles"]`` the canonical SMILES and ``info["forcefield"]``.

    Raises:
        RMError: unparsable SMILES or a failed embedding.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    if seed < 0:
        raise RMError(f"seed={seed}: must be a non-negative integer")
    mol = Chem.AddHs(_rdkit_mol(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise _EmbeddingError(f"SMILES {smiles!r}: ETKDG found no 3D embedding (seed {seed}); "
                          "check the structure or try another seed")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        forcefield = "MMFF94"
        ff = AllChem.MMFFGetMoleculeForceField(mol, AllChem.MMFFGetMoleculeProperties(mol, mmffVariant="MMFF94"))
    else:
        forcefield = "UFF"
        ff = AllChem.UFFGetMoleculeForceField(mol)
    ff.Initialize()
    for _ in range(5):
        if ff.Minimize(maxIts=max_iters) == 0:
            break
    else:
        log.warning("SMILES %s: %s minimisation not converged after %d steps", smiles, forcefield, 5 * max_iters)
    positions = np.asarray(ff.Positions(), dtype=float).reshape(-1, 3)
    positions -= positions.mean(axis=0)
    atoms = Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=positions, pbc=False)
    atoms.info["smiles"] = Chem.MolToSmiles(Chem.RemoveHs(mol))
    atoms.info["forcefield"] = forcefield
    return atoms


def iter_molecules(limit: int | None = None, seed: int = 0,
                   path: str | os.PathLike | None = None) -> Iterator[Atoms]:
    """The molecules of :func:`load_molecules`, built one at a time as they are asked for (so
    a consumer that stops early, such as ``rmdata make --limit`` after its filters, builds
    only what it uses)."""
    if limit is not None and limit < 1:
        raise RMError(f"limit={limit}: must be a positive number of molecules")
    smiles_list = read_smiles_list(path)[:limit]
    built = 0
    for index, smiles in enumerate(smiles_list):
        try:
            atoms = molecule_from_smiles(smiles, seed=seed)
        except _EmbeddingError as exc:
            log.warning("molecules: skipping mol-%04d: %s", index, exc)
            continue
        atoms.info["source_id"] = f"mol-{index:04d}"
        atoms.info["dataset"] = "molecules"
        built += 1
        yield atoms
    log.info("molecules: %d of %d built (seed %d)", built, len(smiles_list), seed)


def load_molecules(limit: int | None = None, seed: int = 0,
                   path: str | os.PathLike | None = None) -> list[Atoms]:
    """The ``molecules`` dataset: every molecule of the SMILES list built in 3D.

    See :func:`molecule_from_smiles` for how each is built (about 5-10 ms per molecule).
    A molecule whose embedding fails is skipped with a warning; its ``source_id`` is not
    reused.

    Args:
        limit: keep only the first ``limit`` molecules of the list.
        seed: ETKDG random seed used for every molecule.
        path: another SMILES list (same format); None uses the shipped one.

    Returns:
        List of non-periodic ``Atoms`` with ``info["source_id"]`` = ``mol-NNNN`` (index in
        the list) and ``info["smiles"]``.
    """
    return list(iter_molecules(limit, seed, path))


def hill_formula(counts: dict[str, int]) -> str:
    """Hill formula of element counts: C first, then H, then the rest alphabetically (``CH4O``)."""
    def part(symbol: str) -> str:
        n = counts[symbol]
        return symbol if n == 1 else f"{symbol}{n}"

    if "C" in counts:
        order = ["C"] + (["H"] if "H" in counts else []) + sorted(s for s in counts if s not in ("C", "H"))
    else:
        order = sorted(counts)
    return "".join(part(s) for s in order if counts[s] > 0)


def molecule_compositions(structures: Iterable[Atoms] | None = None,
                          path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Compositions (Hill formulas) of a molecule set and the ``source_id`` values of each.

    Args:
        structures: molecules carrying ``info["source_id"]`` (e.g. from
            :func:`load_molecules` or :func:`load_qm7b`). None reads the SMILES list
            instead, without building anything in 3D.
        path: SMILES list when ``structures`` is None (None = the shipped one).

    Returns:
        ``{formula: [source_id, ...]}`` with formulas sorted alphabetically and ids in
        dataset order; the formulas equal ``Atoms.get_chemical_formula(mode="hill")``.
    """
    groups: dict[str, list[str]] = {}
    if structures is None:
        from rdkit import Chem

        for index, smiles in enumerate(read_smiles_list(path)):
            mol = Chem.AddHs(_rdkit_mol(smiles))
            counts: dict[str, int] = {}
            for atom in mol.GetAtoms():
                counts[atom.GetSymbol()] = counts.get(atom.GetSymbol(), 0) + 1
            groups.setdefault(hill_formula(counts), []).append(f"mol-{index:04d}")
    else:
        for k, atoms in enumerate(structures):
            sid = atoms.info.get("source_id", str(k))
            groups.setdefault(atoms.get_chemical_formula(mode="hill"), []).append(sid)
    return dict(sorted(groups.items()))


# ---------------------------------------------------------------------------------------
# QM7b: Coulomb matrices -> coordinates


def coulomb_matrix(atoms: Atoms, size: int = 23) -> np.ndarray:
    """QM7b-convention Coulomb matrix of a molecule, zero padded to ``size``.

    ``C_ii = 0.5 Z_i^2.4``, ``C_ij = Z_i Z_j / |R_i - R_j|`` with distances in Bohr
    (atomic units). Atoms keep their order.

    Returns:
        ``(size, size)`` float64 array.
    """
    n = len(atoms)
    if n > size:
        raise RMError(f"molecule with {n} atoms does not fit a {size}x{size} Coulomb matrix")
    z = atoms.numbers.astype(float)
    r_bohr = atoms.positions / Bohr
    dist = np.linalg.norm(r_bohr[:, None, :] - r_bohr[None, :, :], axis=-1)
    np.fill_diagonal(dist, 1.0)
    cm = np.outer(z, z) / dist
    np.fill_diagonal(cm, 0.5 * z**QM7B_CM_EXPONENT)
    out = np.zeros((size, size))
    out[:n, :n] = cm
    return out


def classical_mds(dist: np.ndarray, dim: int = 3) -> np.ndarray:
    """Coordinates whose distance matrices are ``dist`` (classical multidimensional scaling).

    Diagonalises the double-centred Gram matrix ``B = -1/2 J D^2 J`` and keeps its ``dim``
    largest eigenvalues; exact (up to rotation, reflection and translation) when the
    distances are Euclidean in ``dim`` dimensions. Each axis's sign is fixed so that its
    largest-magnitude coordinate is positive. The centroid is at the origin.

    Args:
        dist: ``(n_mol, n, n)`` (or ``(n, n)``) symmetric distance matrices (A).
        dim: embedding dimension.

    Returns:
        ``(n_mol, n, dim)`` (or ``(n, dim)``) coordinates (A).
    """
    single = dist.ndim == 2
    d2 = np.asarray(dist[None] if single else dist, dtype=float) ** 2
    n = d2.shape[-1]
    gram = -0.5 * (d2 - d2.mean(axis=1, keepdims=True) - d2.mean(axis=2, keepdims=True)
                   + d2.mean(axis=(1, 2), keepdims=True))
    evals, evecs = np.linalg.eigh(gram)  # ascending
    k = min(dim, n)
    evals = np.clip(evals[:, ::-1][:, :k], 0.0, None)
    evecs = evecs[:, :, ::-1][:, :, :k]
    pick = np.argmax(np.abs(evecs), axis=1)  # (n_mol, k)
    signs = np.sign(np.take_along_axis(evecs, pick[:, None, :], axis=1))
    signs[signs == 0] = 1.0
    coords = np.zeros((d2.shape[0], n, dim))
    coords[:, :, :k] = evecs * signs * np.sqrt(evals)[:, None, :]
    return coords[0] if single else coords


def _pair_distances(coords: np.ndarray) -> np.ndarray:
    """``(n_mol, n, n)`` distance matrices of ``(n_mol, n, 3)`` coordinates."""
    return np.linalg.norm(coords[:, :, None, :] - coords[:, None, :, :], axis=-1)


def _load_qm7b_matrices(path: Path) -> np.ndarray:
    """The Coulomb matrices ``X`` of a QM7b-layout .mat file, checked, as float64."""
    from scipy.io import loadmat

    if not path.is_file():
        raise RMError(f"{path}: no such file")
    try:
        mat = loadmat(path, variable_names=["X"])
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise RMError(f"{path}: not a readable MATLAB v5 .mat file ({exc}); delete it and download "
                      "QM7b again") from exc
    if "X" not in mat:
        raise RMError(f"{path}: no variable 'X' (Coulomb matrices); is this qm7b.mat?")
    x = np.asarray(mat["X"], dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[0] == 0:
        raise RMError(f"{path}: 'X' has shape {x.shape}, expected (n_molecules, 23, 23) Coulomb matrices")
    if not np.all(np.isfinite(x)):
        raise RMError(f"{path}: 'X' contains NaN or infinity; delete the file and download QM7b again")
    return x


def parse_qm7b(path: str | os.PathLike, max_error: float = QM7B_MAX_ERROR_A) -> list[Atoms]:
    """Molecules of a QM7b-layout ``.mat`` file, with coordinates recovered from ``X``.

    Atoms are the rows with a positive diagonal (zero rows are padding); ``Z_i`` is
    ``(2 C_ii)^(1/2.4)`` rounded (it must be within 1e-3 of an element of H, C, N, O, S,
    Cl), distances ``Z_i Z_j / C_ij`` Bohr, coordinates by :func:`classical_mds`,
    vectorised over molecules of equal size. A molecule is skipped with a warning when
    its elements or distances are invalid or its 3D reconstruction misses a distance by
    more than ``max_error``. As a check on the units, the median shortest C-H distance
    must come out between 1.0 and 1.2 A.

    Args:
        path: the ``.mat`` file (MATLAB v5; needs ``X`` of shape (n, m, m)).
        max_error: largest tolerated |d_recovered - d| in A.

    Returns:
        Non-periodic ``Atoms`` (zero cell, centroid at the origin) with
        ``info["source_id"]`` = ``qm7b-NNNN`` (0-based row of ``X``) and
        ``info["qm7b_reconstruction_error"]`` (A).

    Raises:
        RMError: unreadable file, wrong layout, or distances in unexpected units.
    """
    path = Path(path)
    x = _load_qm7b_matrices(path)
    n_mol, size, _ = x.shape
    diag = np.diagonal(x, axis1=1, axis2=2)
    present = diag > 0
    # bring the atoms of each molecule to the front, keeping their order
    order = np.argsort(~present, axis=1, kind="stable")
    x = np.take_along_axis(np.take_along_axis(x, order[:, :, None], axis=1), order[:, None, :], axis=2)
    diag = np.take_along_axis(diag, order, axis=1)
    n_atoms = present.sum(axis=1)
    z_float = np.where(diag > 0, (2.0 * np.clip(diag, 0.0, None)) ** (1.0 / QM7B_CM_EXPONENT), 0.0)
    z = np.rint(z_float).astype(int)
    allowed_z = np.array([chemical_symbols.index(s) for s in ALLOWED_ELEMENTS])

    atoms_by_index: dict[int, Atoms] = {}
    skipped: list[str] = []
    for n in np.unique(n_atoms):
        idx = np.flatnonzero(n_atoms == n)
        if n == 0:
            skipped += [f"qm7b-{i:04d} (no atoms)" for i in idx]
            continue
        zg, zfg, cg = z[idx, :n], z_float[idx, :n], x[idx, :n, :n]
        off = ~np.eye(n, dtype=bool)
        bad_z = (np.abs(zfg - zg) > 1e-3).any(axis=1) | ~np.isin(zg, allowed_z).all(axis=1)
        bad_c = (cg[:, off] <= 0).any(axis=1) if n > 1 else np.zeros(len(idx), bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.where(off, zg[:, :, None] * zg[:, None, :] / cg, 0.0) * Bohr
        bad_c |= ~np.isfinite(dist).all(axis=(1, 2))
        dist = np.where(np.isfinite(dist), dist, 0.0)
        coords = classical_mds(dist)
        err = np.abs(_pair_distances(coords) - dist).max(axis=(1, 2))
        for k, i in enumerate(idx):
            if bad_z[k]:
                skipped.append(f"qm7b-{i:04d} (diagonal gives Z = {np.round(zfg[k], 3).tolist()})")
            elif bad_c[k]:
                skipped.append(f"qm7b-{i:04d} (non-positive off-diagonal entry)")
            elif not err[k] <= max_error:
                skipped.append(f"qm7b-{i:04d} (3D reconstruction error {err[k]:.2e} A)")
            else:
                atoms = Atoms(numbers=zg[k], positions=coords[k], pbc=False)
                atoms.info["source_id"] = f"qm7b-{i:04d}"
                atoms.info["dataset"] = "qm7b"
                atoms.info["qm7b_reconstruction_error"] = float(err[k])
                atoms_by_index[int(i)] = atoms
    if skipped:
        log.warning("%s: skipped %d of %d molecules: %s%s", path.name, len(skipped), n_mol,
                    "; ".join(skipped[:10]), " ..." if len(skipped) > 10 else "")
    molecules = [atoms_by_index[i] for i in sorted(atoms_by_index)]
    if not molecules:
        raise RMError(f"{path}: no molecule could be recovered from its Coulomb matrices")
    _check_units(molecules, path)
    log.info("%s: %d molecules recovered, %d skipped, max reconstruction error %.1e A", path.name,
             len(molecules), len(skipped), max(a.info["qm7b_reconstruction_error"] for a in molecules))
    return molecules


def _check_units(molecules: Sequence[Atoms], path: Path) -> None:
    """RMError unless the median shortest C-H distance is a C-H bond length (A)."""
    shortest = []
    for atoms in molecules:
        c, h = atoms.numbers == 6, atoms.numbers == 1
        if c.any() and h.any():
            pos = atoms.positions
            shortest.append(np.linalg.norm(pos[c][:, None] - pos[h][None], axis=-1).min())
    if not shortest:
        return
    median = float(np.median(shortest))
    lo, hi = _CH_BOND_RANGE_A
    if not lo <= median <= hi:
        raise RMError(f"{path}: recovered C-H distances have median {median:.3f} A, not {lo}-{hi} A: "
                      "the Coulomb matrices are not in atomic units (Bohr) like QM7b's")


def load_qm7b(cache_dir: str | os.PathLike | None = None, url: str | None = None,
              sha256: str | None = QM7B_SHA256) -> list[Atoms]:
    """The ``qm7b`` dataset: download ``qm7b.mat`` once (cached), then :func:`parse_qm7b`.

    Args:
        cache_dir: where ``qm7b.mat`` is kept; None uses :func:`rmdata.download.cache_dir`
            (``$RMDATA_CACHE`` or ``~/.cache/rmdata``).
        url: download from this URL only; None tries :data:`QM7B_URLS` in order.
        sha256: expected SHA-256 of the file; None records it on first download and
            verifies later uses against the record.

    Raises:
        RMError: no URL could deliver a file with the right checksum (offline, for
            example), or the file cannot be parsed.
    """
    from rmdata.download import cache_dir as default_cache_dir
    from rmdata.download import fetch

    dest = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = dest / "qm7b.mat"
    urls = [url] if url else list(QM7B_URLS)
    errors = []
    for u in urls:
        try:
            path = fetch(u, dest, sha256, name="qm7b",
                         offline_hint="use --dataset molecules for an offline molecule set")
            break
        except RMError as exc:
            errors.append(str(exc))
            log.info("%s", exc)
    else:
        others = ", ".join(urls[1:])
        raise RMError(errors[0] + (f" (tried {others} too, in vain)" if others else ""))
    if errors:
        log.warning("qm7b: %s; used %s instead", errors[0], u)
    molecules = parse_qm7b(path)
    if url is None and sha256 == QM7B_SHA256 and len(molecules) != QM7B_N_MOLECULES:
        log.warning("qm7b: %d of %d molecules recovered", len(molecules), QM7B_N_MOLECULES)
    return molecules
