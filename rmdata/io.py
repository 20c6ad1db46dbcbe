"""Dataset files: streaming extxyz and HDF5 writers, and one reader for both.

Label contract (DESIGN §2): per atom ``REF_forces`` (eV/A); per frame ``REF_stress``
(3x3, eV/A^3, positive = tensile; absent for molecules), ``REF_pseudo_energy`` (eV),
``config_type``, ``source_id``, ``noise_level``, ``strain``. Never ``forces``/``stress``/
``energy``, which ASE would move into a calculator and MACE would read as labels.

extxyz: ASE's extended XYZ, one frame per block; the first frame's ``rm_provenance``
holds the provenance as a JSON string.

HDF5 layout (``format = "rmdata"``, ``format_version = 1`` in the root attributes,
``provenance`` a JSON string attribute)::

    /numbers            (n_atoms_total,)      int16  atomic numbers
    /positions          (n_atoms_total, 3)    f8     A
    /REF_forces         (n_atoms_total, 3)    f8     eV/A
    /n_atoms            (n_frames,)           int32  atoms per frame
    /offsets            (n_frames,)           int64  first row of each frame in the per-atom arrays
    /cell               (n_frames, 3, 3)      f8     A, rows are lattice vectors
    /pbc                (n_frames, 3)         bool
    /REF_stress         (n_frames, 3, 3)      f8     eV/A^3 (NaN for non-periodic frames)
    /REF_pseudo_energy  (n_frames,)           f8     eV
    /noise_level        (n_frames,)           f8
    /strain             (n_frames,)           f8
    /config_type        (n_frames,)           str
    /source_id          (n_frames,)           str

Both writers stream: frames go to disk as they come, so memory stays flat, and the
file appears under its final name only when it is complete (write to a temporary file,
fsync, rename).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from rmdata.errors import RMError
from rmdata.utils import atomic_output

log = logging.getLogger(__name__)

H5_SUFFIXES = (".h5", ".hdf5")
XYZ_SUFFIXES = (".xyz", ".extxyz")
FORMATS = ("extxyz", "hdf5")


def format_for(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The file format from ``fmt`` or, when None, from the file suffix."""
    suffix = Path(path).suffix.lower()
    if fmt is not None:
        if fmt not in FORMATS:
            raise RMError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        implied = "hdf5" if suffix in H5_SUFFIXES else "extxyz" if suffix in XYZ_SUFFIXES else None
        if implied is not None and implied != fmt:
            raise RMError(f"--format {fmt} does not match the suffix of {path} ({suffix}, {implied}); "
                          "drop --format or change the suffix")
        return fmt
    if suffix in H5_SUFFIXES:
        return "hdf5"
    if suffix in XYZ_SUFFIXES:
        return "extxyz"
    raise RMError(f"{path}: cannot tell the format from the suffix {suffix!r}; use .xyz/.extxyz "
                  "or .h5/.hdf5")


class FrameBatch:
    """Frames of one reference structure with their labels, ready to be written.

    Attributes:
        numbers: ``(n_atoms,)`` atomic numbers.
        positions: ``(n_frames, n_atoms, 3)`` (A).
        cells: ``(n_frames, 3, 3)`` (A); zeros for molecules.
        pbc: ``(3,)``.
        forces: ``(n_frames, n_atoms, 3)`` (eV/A).
        stress: ``(n_frames, 3, 3)`` (eV/A^3) or None.
        pseudo_energy, noise_level, strain: ``(n_frames,)``.
        config_type, source_id: strings shared by all frames.
    """

    def __init__(self, numbers, positions, cells, pbc, forces, stress, pseudo_energy, noise_level,
                 strain, config_type: str, source_id: str):
        self.numbers = np.asarray(numbers)
        self.positions = positions
        self.cells = cells
        self.pbc = np.asarray(pbc, dtype=bool)
        self.forces = forces
        self.stress = stress
        self.pseudo_energy = pseudo_energy
        self.noise_level = noise_level
        self.strain = strain
        self.config_type = config_type
        self.source_id = source_id

    def __len__(self) -> int:
        return len(self.positions)

    def to_atoms(self) -> list[Atoms]:
        """The frames as ASE ``Atoms`` with labels in ``arrays``/``info``."""
        out = []
        for f in range(len(self)):
            atoms = Atoms(numbers=self.numbers, positions=self.positions[f], cell=self.cells[f],
                          pbc=self.pbc)
            atoms.arrays["REF_forces"] = self.forces[f]
            if self.stress is not None:
                atoms.info["REF_stress"] = self.stress[f]
            atoms.info["REF_pseudo_energy"] = float(self.pseudo_energy[f])
            atoms.info["config_type"] = self.config_type
            atoms.info["source_id"] = self.source_id
            atoms.info["noise_level"] = float(self.noise_level[f])
            atoms.info["strain"] = float(self.strain[f])
            out.append(atoms)
        return out


class ExtxyzWriter:
    """Stream frames into an extxyz file (the first frame carries the provenance)."""

    def __init__(self, handle, provenance: dict[str, Any]):
        self._fh = handle
        self._provenance = json.dumps(provenance, sort_keys=True)
        self.n_frames = 0

    def write(self, batch: FrameBatch) -> None:
        from ase.io.extxyz import write_extxyz

        frames = batch.to_atoms()
        if self.n_frames == 0 and frames:
            frames[0].info["rm_provenance"] = self._provenance
        write_extxyz(self._fh, frames)
        self.n_frames += len(frames)


class HDF5Writer:
    """Stream frames into the HDF5 layout of this module (resizable, chunked datasets)."""

    _PER_ATOM = {"numbers": ((), "i2"), "positions": ((3,), "f8"), "REF_forces": ((3,), "f8")}
    _PER_FRAME = {"n_atoms": ((), "i4"), "offsets": ((), "i8"), "cell": ((3, 3), "f8"),
                  "pbc": ((3,), "bool"), "REF_stress": ((3, 3), "f8"),
                  "REF_pseudo_energy": ((), "f8"), "noise_level": ((), "f8"), "strain": ((), "f8")}

    def __init__(self, h5file, provenance: dict[str, Any]):
        import h5py

        self._f = h5file
        self._f.attrs["format"] = "rmdata"
        self._f.attrs["format_version"] = 1
        self._f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        str_dt = h5py.string_dtype("utf-8")
        for name, (shape, dt) in {**self._PER_ATOM, **self._PER_FRAME}.items():
            self._f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dt,
                                   chunks=(4096, *shape), track_times=False)
        for name in ("config_type", "source_id"):
            self._f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=str_dt,
                                   chunks=(4096,), track_times=False)
        self.n_frames = 0
        self.n_atoms_total = 0
        self._pending: dict[str, list[np.ndarray]] = {}
        self._buffered = 0

    #: buffered atoms before the arrays go to disk (bounds memory, amortises HDF5 calls)
    FLUSH_ATOMS = 1 << 18
    #: bytes kept free for HDF5 metadata and the final close
    DISK_MARGIN = 1 << 20

    def write(self, batch: FrameBatch) -> None:
        n_frames, n_atoms = batch.positions.shape[:2]
        if n_frames == 0:
            return
        stress = batch.stress if batch.stress is not None else np.full((n_frames, 3, 3), np.nan)
        pending = self._pending
        columns = {
            "numbers": np.tile(batch.numbers, n_frames),
            "positions": batch.positions.reshape(-1, 3),
            "REF_forces": batch.forces.reshape(-1, 3),
            "n_atoms": np.full(n_frames, n_atoms),
            "offsets": self.n_atoms_total + n_atoms * np.arange(n_frames),
            "cell": batch.cells,
            "pbc": np.broadcast_to(batch.pbc, (n_frames, 3)),
            "REF_stress": stress,
            "REF_pseudo_energy": batch.pseudo_energy,
            "noise_level": batch.noise_level,
            "strain": batch.strain,
            "config_type": np.array([batch.config_type] * n_frames, dtype=object),
            "source_id": np.array([batch.source_id] * n_frames, dtype=object),
        }
        for name, values in columns.items():
            pending.setdefault(name, []).append(values)
        self.n_frames += n_frames
        self.n_atoms_total += n_frames * n_atoms
        self._buffered += n_frames * n_atoms
        if self._buffered >= self.FLUSH_ATOMS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered frames to the file.

        Raises ``OSError(ENOSPC)`` *before* writing when the disk cannot take the
        buffered bytes (plus a margin for HDF5 metadata): HDF5 itself does not recover
        from a full disk (it crashes at interpreter exit), so it must never hit one.
        """
        columns = {name: np.concatenate(parts) for name, parts in self._pending.items()}
        need = sum(v.nbytes if v.dtype != object else 64 * len(v) for v in columns.values())
        free = shutil.disk_usage(Path(self._f.filename).parent).free
        if free < 1.2 * need + self.DISK_MARGIN:
            raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free, "
                                        f"about {int(1.2 * need) + self.DISK_MARGIN} needed)")
        for name, values in columns.items():
            ds = self._f[name]
            start = ds.shape[0]
            ds.resize(start + len(values), axis=0)
            ds[start:] = values
        self._pending = {}
        self._buffered = 0


@contextlib.contextmanager
def open_writer(path: str | os.PathLike, provenance: dict[str, Any], fmt: str | None = None
                ) -> Iterator[ExtxyzWriter | HDF5Writer]:
    """Open a streaming writer for ``path``; the file appears only once complete.

    Yields an object with ``write(batch: FrameBatch)`` and ``n_frames``.
    """
    fmt = format_for(path, fmt)
    with atomic_output(path) as tmp:
        if fmt == "hdf5":
            import h5py

            with h5py.File(tmp, "w", track_order=False) as h5:
                writer = HDF5Writer(h5, provenance)
                yield writer
                writer.flush()
        else:
            with open(tmp, "w") as fh:
                yield ExtxyzWriter(fh, provenance)


# ---------------------------------------------------------------------------------------
# reading


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise RMError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise RMError(f"{path}: the file is empty")


def check_text_file(path: str | os.PathLike) -> None:
    """One-line RMError if a text structure file holds NUL bytes (a corrupt or binary file:
    parsers skip them silently inside comments and strings)."""
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            if b"\x00" in block:
                raise RMError(f"{path}: contains NUL bytes; a corrupt or binary file, not a text structure file")


def read(path: str | os.PathLike, index: str | int | slice = ":") -> list[Atoms] | Atoms:
    """Read an rmdata dataset (extxyz or HDF5) into ASE ``Atoms``.

    Labels are in ``atoms.arrays["REF_forces"]`` (eV/A) and ``atoms.info["REF_stress"]``
    (3x3, eV/A^3); ``config_type``, ``source_id``, ``noise_level``, ``strain`` and
    ``REF_pseudo_energy`` are in ``atoms.info``. ``index`` follows ``ase.io.read``
    (an int returns one ``Atoms``).
    """
    path = Path(path)
    _check_exists(path)
    fmt = format_for(path)
    if fmt == "hdf5":
        frames = _read_h5(path)
        return frames[index] if isinstance(index, (int, slice)) else frames
    import ase.io

    check_text_file(path)
    try:
        out = ase.io.read(path, index=index, format="extxyz")
    except Exception as exc:  # noqa: BLE001 - ASE raises many types on malformed files
        raise RMError(f"{path}: not a readable extxyz file ({type(exc).__name__}: {exc})") from exc
    for i, atoms in enumerate(out if isinstance(out, list) else [out]):
        if "REF_stress" in atoms.info:
            try:
                atoms.info["REF_stress"] = np.asarray(atoms.info["REF_stress"], float).reshape(3, 3)
            except (TypeError, ValueError) as exc:
                raise RMError(f"{path}: frame {i}: REF_stress is not 9 numbers") from exc
    return out


def require_labels(frames: list[Atoms], path: str | os.PathLike, stress: bool = False) -> None:
    """One-line RMError unless ``frames`` are a usable rmdata dataset: every frame carries
    finite per-atom ``REF_forces`` (eV/A) (and, with ``stress``, a ``REF_stress``), finite
    positions under 1e4 A, no two atoms at the same position, and periodic frames a finite
    cell of positive volume that is not flat."""
    if not frames:
        raise RMError(f"{path}: no frames in the file")
    for i, atoms in enumerate(frames):
        forces = atoms.arrays.get("REF_forces")
        if forces is None or np.shape(forces) != (len(atoms), 3):
            raise RMError(f"{path}: frame {i} has no REF_forces labels; not an rmdata dataset (label "
                          f"structures with 'rmdata make --input {path}')")
        if stress and "REF_stress" not in atoms.info:
            raise RMError(f"{path}: frame {i} has no REF_stress; this command needs rmdata crystal files "
                          "('rmdata make --dataset diamond -o FILE.xyz')")
        problem = frame_problem(atoms)
        if problem is None and not np.all(np.isfinite(forces)):
            problem = "REF_forces contain NaN or infinity"
        if problem is not None:
            raise RMError(f"{path}: frame {i}: {problem}; the file is corrupt, make it again with 'rmdata make'")


def frame_problem(atoms: Atoms) -> str | None:
    """What makes one frame unusable (non-finite or huge positions, two atoms on one
    position, a degenerate periodic cell), or None."""
    positions = np.asarray(atoms.positions, dtype=float)
    if len(positions) == 0:
        return "no atoms"
    if not np.all(np.isfinite(positions)) or np.abs(positions).max() > 1e4:
        return "positions are not finite numbers under 1e4 A"
    if len(np.unique(np.round(positions, 8), axis=0)) < len(positions):
        return "two atoms at the same position"
    if atoms.pbc.any():
        cell = np.asarray(atoms.cell, dtype=float)
        if not np.all(np.isfinite(cell)):
            return "the cell is not finite"
        lengths = np.linalg.norm(cell, axis=1)
        volume = abs(np.linalg.det(cell))
        if not volume > 1e-6 or volume / max(np.prod(lengths), 1e-300) < 1e-3:
            return "periodic frame with a zero or flat cell"
    return None


def _read_h5(path: Path) -> list[Atoms]:
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise RMError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with h5:
        if h5.attrs.get("format") != "rmdata":
            raise RMError(f"{path}: not an rmdata HDF5 file (root attribute 'format' is not 'rmdata')")
        try:
            data = {name: h5[name][()] for name in h5.keys()}
        except (KeyError, TypeError, ValueError, OSError, AttributeError) as exc:
            raise RMError(f"{path}: unreadable dataset ({type(exc).__name__}: {exc}); "
                          "not a complete rmdata HDF5 file") from exc
    required = ("numbers", "positions", "REF_forces", "n_atoms", "offsets", "cell", "pbc",
                "REF_stress", "REF_pseudo_energy", "noise_level", "strain", "config_type", "source_id")
    missing = [k for k in required if k not in data]
    if missing:
        raise RMError(f"{path}: missing dataset(s) {', '.join(missing)}")
    _check_h5_shapes(path, data)
    frames = []
    for f, (start, n) in enumerate(zip(data["offsets"], data["n_atoms"])):
        sl = slice(int(start), int(start) + int(n))
        atoms = Atoms(numbers=data["numbers"][sl], positions=data["positions"][sl],
                      cell=data["cell"][f], pbc=data["pbc"][f])
        atoms.arrays["REF_forces"] = data["REF_forces"][sl].copy()
        if np.all(np.isfinite(data["REF_stress"][f])):
            atoms.info["REF_stress"] = data["REF_stress"][f].copy()
        atoms.info["REF_pseudo_energy"] = float(data["REF_pseudo_energy"][f])
        atoms.info["config_type"] = _str(data["config_type"][f])
        atoms.info["source_id"] = _str(data["source_id"][f])
        atoms.info["noise_level"] = float(data["noise_level"][f])
        atoms.info["strain"] = float(data["strain"][f])
        frames.append(atoms)
    return frames


def _check_h5_shapes(path: Path, data: dict[str, np.ndarray]) -> None:
    """One-line RMError unless the datasets of an rmdata HDF5 file fit together."""
    n_total = len(data["numbers"]) if np.ndim(data["numbers"]) == 1 else -1
    if n_total < 0 or data["positions"].shape != (n_total, 3) or data["REF_forces"].shape != (n_total, 3):
        raise RMError(f"{path}: per-atom datasets have inconsistent shapes")
    n_frames = len(data["n_atoms"]) if np.ndim(data["n_atoms"]) == 1 else -1
    shapes = {"offsets": (n_frames,), "cell": (n_frames, 3, 3), "pbc": (n_frames, 3),
              "REF_stress": (n_frames, 3, 3), "REF_pseudo_energy": (n_frames,), "noise_level": (n_frames,),
              "strain": (n_frames,), "config_type": (n_frames,), "source_id": (n_frames,)}
    wrong = [k for k, shape in shapes.items() if np.shape(data[k]) != shape]
    if n_frames < 0 or wrong:
        raise RMError(f"{path}: frame datasets {', '.join(wrong) or 'n_atoms'} have inconsistent shapes")
    try:
        n_atoms = data["n_atoms"].astype(np.int64)
        offsets = data["offsets"].astype(np.int64)
        numbers = data["numbers"].astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise RMError(f"{path}: n_atoms/offsets/numbers are not integers") from exc
    if int(n_atoms.sum()) != n_total or np.any(n_atoms < 0) or np.any(offsets < 0) \
            or np.any(offsets + n_atoms > n_total):
        raise RMError(f"{path}: frame datasets do not add up to the per-atom datasets")
    if n_total and (numbers.min() < 1 or numbers.max() > 118):
        raise RMError(f"{path}: unknown element (atomic numbers {numbers.min()}..{numbers.max()})")


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance record stored in an rmdata file ({} when there is none)."""
    path = Path(path)
    _check_exists(path)
    try:
        if format_for(path) == "hdf5":
            import h5py

            with h5py.File(path, "r") as h5:
                raw = h5.attrs.get("provenance")
        else:
            import ase.io

            first = ase.io.read(path, index=0, format="extxyz")
            raw = first.info.get("rm_provenance")
    except RMError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py and ASE raise many types on malformed files
        raise RMError(f"{path}: cannot read the provenance ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from exc
    if not raw:
        return {}
    try:
        prov = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise RMError(f"{path}: the provenance is not valid JSON ({exc})") from exc
    return prov if isinstance(prov, dict) else {}
