"""Random starting structures for a search (AIRSS-like), seeded per run id.

A :class:`StartSpec` says *what* to generate; :func:`make_start` turns it into one
``ase.Atoms`` for one run id. The start of run ``r`` of a search with seed ``S`` is
drawn from ``np.random.default_rng([S, r])`` alone, so it is the same on any machine,
in any order and in any worker.

Three kinds of spec:

- ``system`` (``Li-S``): every composition ``Li_a S_b`` (``a, b >= 0``) whose atom count
  lies in ``natoms`` is equally likely; the endpoints (pure elements) are included so
  that a pseudo convex hull has its references.
- ``composition`` (``Li2S``): a whole number of formula units with an atom count in
  ``natoms``, each allowed number equally likely.
- ``molecule`` (``C4H6O``): exactly these atoms, uniformly random in a non-periodic
  box (10 x 5 x 5 A by default) with a minimum distance (0.7 A), DESIGN §5.

Crystals: volume = sum of the per-element volumes (A^3/atom, fitted on the training
set, ``Potential.volumes``) times a factor drawn uniformly from ``volume_factor``
(default 0.8-1.2). The cell is built in LAMMPS' lower-triangular frame with lattice
lengths within a ratio ``max_length_ratio`` (default 2) of each other and tilt factors
``|xy|, |xz| <= max_tilt * lx``, ``|yz| <= max_tilt * ly`` (default 0.35, LAMMPS accepts
up to 0.5), so every start is a valid LAMMPS triclinic box as it is. Atoms are placed
by random sequential addition with a per-pair minimum separation
``max(minsep_floor, minsep_factor * (r_cov,i + r_cov,j))`` checked against all periodic
images (defaults 0.7 x covalent radii sum, at least 0.7 A).

Symmetric starts (``spacegroup`` an int 1-230, ``"random"`` for a space group drawn
uniformly among those whose Wyckoff positions can hold the composition, or ``"mixed"``:
``"random"`` for even run ids and no symmetry for odd ones, half and half) are made by
pyxtal with a lattice of the group's crystal family and the same target volume; the
cell is then reduced to LAMMPS' tilt bounds (same lattice, other basis). When pyxtal
cannot place the composition in the group, the start falls back to an unconstrained
random one and says so in ``atoms.info["start_status"]``. With a fixed space group,
compositions that fit its Wyckoff positions are preferred. spglib may find a supergroup
of the group asked for: few atoms on special positions often have more symmetry.

Weighted groups (``spacegroup_weights``, with ``"random"`` or ``"mixed"``): the group of a
symmetric start is drawn with these weights (e.g. how often each group occurs among known
crystals of the same stoichiometry, :class:`rmsearch.symmetry.SpacegroupPrior`) among the
groups that can hold the start, instead of uniformly. A centred group (A, B, C, I: 2
lattice points, R in hexagonal axes: 3, F: 4) is placed in its conventional cell with that
many times the atoms, and the start is its primitive cell: the atom count asked for.

Wyckoff templates (``wyckoff``, with a fixed space group): each start draws one template
(element -> Wyckoff sites of the group, pyxtal's standard setting, e.g. ``Na: 4a, Cl: 4b``
in Fm-3m) and pyxtal places the atoms on exactly those sites, free parameters and lattice
random; the start's composition is the template's (the sites' multiplicities in the
conventional cell). Templates of known crystals: :class:`rmsearch.symmetry.WyckoffPrior`.

Every start carries in ``atoms.info``: ``run_id``, ``seed``, ``start_kind``
(``random``, ``spacegroup``, ``molecule``), ``spacegroup_start`` (int or None),
``start_status`` (``ok`` or ``fallback: ...``) and ``volume_factor``; a start placed on a
Wyckoff template also ``wyckoff`` (the template as text, ``"Cl:4b,Na:4a"``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from itertools import product
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.lammps.coordinatetransform import Prism
from ase.data import atomic_numbers, covalent_radii
from ase.formula import Formula

from rmdata.errors import RMError

log = logging.getLogger(__name__)

MODES = ("system", "composition", "molecule")
#: Candidate positions drawn at once per atom in random sequential addition.
_BATCH = 64
#: Placement attempts per cell, and cells tried per start, before giving up.
_PLACEMENT_TRIES = 20
_CELL_TRIES = 50
#: pyxtal draws per start before falling back to a random start.
_PYXTAL_TRIES = 5
#: Distance checks pyxtal may make for one start (all its draws) before the start falls back
#: to a random one: a bound on groups pyxtal cannot fill that counts work, not seconds, so
#: a start stays a function of its seed (see :func:`_spacegroup_crystal`).
PYXTAL_CHECKS = 4000
#: The ``spacegroup`` values that draw a group per start: every start, or every even run id.
DRAWN_GROUPS = ("random", "mixed")
#: Draws of a random space group before giving up ("random" mode).
_SG_DRAWS = 200
#: Lattice points per conventional cell of each centring letter (pyxtal's settings: R groups
#: in hexagonal axes).
CENTRING = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}


#: Most atoms in one start cell (more would take hours per relaxation).
MAX_NATOMS = 500


@dataclass
class StartSpec:
    """What random starts to make.

    Attributes:
        mode: ``system``, ``composition`` or ``molecule``.
        elements: element symbols (system mode: the system; else those of ``formula``).
        formula: the composition (one formula unit) or the molecule, else None.
        natoms: inclusive range of atoms per cell (ignored for molecules).
        volumes: per-element volume (A^3/atom); needed for crystals.
        volume_factor: inclusive range of the random volume factor.
        minsep_factor: minimum separation as a fraction of the covalent radii sum.
        minsep_floor: lower bound of every minimum separation (A).
        max_length_ratio: largest ratio between two lattice lengths of a random cell.
        max_tilt: largest LAMMPS tilt factor as a fraction of the box length (< 0.5).
        spacegroup: None (no symmetry), an international number 1-230, "random", or
            "mixed" (even run ids "random", odd ones no symmetry).
        spacegroup_weights: relative weight of each space group (number -> weight >= 0) in
            the draw of "random"/"mixed" starts; empty: uniform among those that fit.
        wyckoff: Wyckoff templates, one drawn per start (element -> site labels of the fixed
            ``spacegroup``); empty: pyxtal chooses the sites.
        box: molecule box edge lengths (A).
    """

    mode: str
    elements: tuple[str, ...]
    formula: str | None = None
    natoms: tuple[int, int] = (2, 12)
    volumes: dict[str, float] = field(default_factory=dict)
    volume_factor: tuple[float, float] = (0.8, 1.2)
    minsep_factor: float = 0.7
    minsep_floor: float = 0.7
    max_length_ratio: float = 2.0
    max_tilt: float = 0.35
    spacegroup: int | str | None = None
    spacegroup_weights: dict[int, float] = field(default_factory=dict)
    box: tuple[float, float, float] = (10.0, 5.0, 5.0)
    wyckoff: tuple[dict[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        self.elements = tuple(self.elements)
        self.natoms = tuple(int(n) for n in self.natoms)
        self.volume_factor = tuple(float(v) for v in self.volume_factor)
        self.box = tuple(float(b) for b in self.box)
        self.volumes = {str(k): float(v) for k, v in self.volumes.items()}
        self.spacegroup_weights = parse_spacegroup_weights(self.spacegroup_weights)
        self.wyckoff = parse_wyckoff(self.wyckoff)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`RMError` naming the first field that is out of range."""
        if self.mode not in MODES:
            raise RMError(f"start spec: mode={self.mode!r}, must be one of {', '.join(MODES)}")
        for el in self.elements:
            if el not in atomic_numbers:
                raise RMError(f"start spec: unknown element {el!r}")
        if not self.elements:
            raise RMError("start spec: no elements given")
        lo, hi = self.natoms
        if not 1 <= lo <= hi <= MAX_NATOMS:
            raise RMError(f"--natoms {lo}-{hi}: must satisfy 1 <= min <= max <= {MAX_NATOMS} (e.g. 2-12)")
        vlo, vhi = self.volume_factor
        if not (math.isfinite(vlo) and math.isfinite(vhi) and 0 < vlo <= vhi <= 10):
            raise RMError(f"--volume-factor {vlo}-{vhi}: must be finite with 0 < min <= max <= 10 (e.g. 0.8-1.2)")
        if not 0 <= self.max_tilt <= 0.5:
            raise RMError(f"start spec: max_tilt={self.max_tilt} must lie in [0, 0.5] (LAMMPS limit)")
        if self.max_length_ratio < 1:
            raise RMError(f"start spec: max_length_ratio={self.max_length_ratio} must be >= 1")
        if self.minsep_factor < 0 or self.minsep_floor < 0:
            raise RMError("start spec: minsep_factor and minsep_floor must be >= 0")
        sg = self.spacegroup
        if sg is not None and sg not in DRAWN_GROUPS and not (isinstance(sg, int) and 1 <= sg <= 230):
            raise RMError(f"start spec: spacegroup={sg!r} must be an integer 1-230, 'random' or 'mixed'")
        if self.spacegroup_weights and sg not in DRAWN_GROUPS:
            raise RMError("--spacegroup-weights: weights a drawn group; give --spacegroups random or mixed")
        if self.wyckoff:
            self._validate_wyckoff()
        if self.mode == "molecule":
            if sg is not None:
                raise RMError("start spec: --spacegroup applies to crystals, not to --molecule")
            if min(self.box) <= 0:
                raise RMError(f"start spec: molecule box {self.box} must have positive edges (A)")
        else:
            missing = [el for el in self.elements if el not in self.volumes]
            if missing:
                raise RMError(f"start spec: no per-element volume (A^3/atom) for {', '.join(missing)}: not among "
                              f"the potential's elements ({', '.join(sorted(self.volumes))}); search only "
                              "elements it was trained on")
            if self.mode == "composition":
                fu = sum(_formula_counts(self.formula).values())
                if not any(lo <= n * fu <= hi for n in range(1, hi // fu + 1)):
                    raise RMError(f"start spec: no whole number of {self.formula} formula units "
                                  f"({fu} atoms each) fits natoms={lo}-{hi}")

    def _validate_wyckoff(self) -> None:
        sg = self.spacegroup
        if not isinstance(sg, int):
            raise RMError("--wyckoff: sites belong to one space group; give --spacegroup N (a number)")
        labels = {wp.get_label() for wp in _group(sg).Wyckoff_positions}
        comps = compositions(self)
        for template in self.wyckoff:
            text = wyckoff_text(template)
            unknown = sorted({lab for sites in template.values() for lab in sites} - labels)
            if unknown:
                raise RMError(f"--wyckoff {text}: space group {sg} has no site {', '.join(unknown)} "
                              f"(its sites: {', '.join(sorted(labels, key=_site_key))})")
            if wyckoff_counts(sg, template) not in comps:
                formula = Atoms(_numbers(wyckoff_counts(sg, template))).get_chemical_formula()
                raise RMError(f"--wyckoff {text}: its sites hold {formula}, which is not a cell of this "
                              "search; match --composition/--system and --natoms (atoms of the conventional cell)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        for key in ("elements", "natoms", "volume_factor", "box"):
            d[key] = list(d[key])
        d["wyckoff"] = [{el: list(sites) for el, sites in t.items()} for t in self.wyckoff]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartSpec:
        return cls(**data)


def _formula_counts(formula: str) -> dict[str, int]:
    try:
        counts = Formula(formula).count()
    except ValueError as exc:
        raise RMError(f"cannot read formula {formula!r} ({exc})") from exc
    if not counts or any(el not in atomic_numbers or el == "X" for el in counts):
        raise RMError(f"formula {formula!r} has no known elements")
    return dict(counts)


def parse_natoms(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"2-12"`` -> (2, 12); ``"8"`` or 8 -> (8, 8)."""
    if isinstance(text, tuple):
        return int(text[0]), int(text[1])
    if isinstance(text, int):
        return text, text
    try:
        parts = [int(p) for p in str(text).split("-")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise RMError(f"--natoms {text!r}: expected a number or a range like 2-12")
    return parts[0], parts[1]


def parse_range(text: str, name: str) -> tuple[float, float]:
    """``"0.8-1.2"`` -> (0.8, 1.2); ``"1.0"`` -> (1.0, 1.0)."""
    try:
        parts = [float(p) for p in str(text).split("-")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise RMError(f"{name} {text!r}: expected a number or a range like 0.8-1.2")
    return parts[0], parts[1]


def parse_spacegroup(text: str | int | None) -> int | str | None:
    """``None``/``"none"`` -> None, ``"random"``/``"mixed"`` -> themselves, ``"225"`` -> 225."""
    if text is None or str(text).lower() in ("", "none"):
        return None
    if str(text).lower() in DRAWN_GROUPS:
        return str(text).lower()
    try:
        sg = int(text)
    except ValueError:
        raise RMError(f"--spacegroup {text!r}: expected an integer 1-230, 'random' or 'mixed'") from None
    if not 1 <= sg <= 230:
        raise RMError(f"--spacegroup {sg}: space groups are numbered 1-230")
    return sg


def parse_spacegroup_weights(weights: Any, name: str = "--spacegroup-weights") -> dict[int, float]:
    """``{"225": 3, ...}`` (a mapping, or the path of a JSON file holding one) -> {225: 3.0, ...};
    RMError naming ``name`` unless every key is a group number 1-230 and every weight a finite
    number >= 0, at least one of them > 0 (an empty mapping: no weights)."""
    import json
    import os

    if weights is None:
        return {}
    if isinstance(weights, (str, os.PathLike)):
        try:
            with open(weights) as fh:
                weights = json.load(fh)
        except (OSError, ValueError) as exc:
            raise RMError(f"{name} {weights}: cannot read a JSON object of space group -> weight ({exc})") from None
    if not isinstance(weights, dict):
        raise RMError(f"{name}: expected a JSON object of space group number -> weight")
    out: dict[int, float] = {}
    for key, value in weights.items():
        try:
            sg, w = int(key), float(value)
        except (TypeError, ValueError):
            raise RMError(f"{name}: {key!r}: {value!r} is not a space group number and a weight") from None
        if not 1 <= sg <= 230 or not math.isfinite(w) or w < 0:
            raise RMError(f"{name}: {key!r}: {value!r}: groups are numbered 1-230 and weights must be "
                          "finite and >= 0")
        out[sg] = w
    if out and not any(out.values()):
        raise RMError(f"{name}: every weight is 0; give at least one positive weight")
    return dict(sorted(out.items()))


def parse_wyckoff(value: Any, name: str = "--wyckoff") -> tuple[dict[str, tuple[str, ...]], ...]:
    """Wyckoff templates from ``"Na:4a,Cl:4b"`` (element:sites, several sites of one element
    joined by ``+``: ``"O:4c+8d"``), several templates joined by ``;``, the path of a JSON file
    holding a list of ``{"Na": ["4a"], ...}``, or such a list -> ``({"Na": ("4a",), ...}, ...)``;
    RMError naming ``name`` for anything else (an empty value: no templates)."""
    import json
    import os

    if value is None or value == "" or value == () or value == []:
        return ()
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        try:
            with open(value) as fh:
                value = json.load(fh)
        except (OSError, ValueError) as exc:
            raise RMError(f"{name} {value}: cannot read a JSON list of templates ({exc})") from None
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, str):
        value = [_wyckoff_from_text(part, name) for part in value.split(";") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise RMError(f"{name}: expected element:sites text (Na:4a,Cl:4b) or a JSON list of templates")
    out = []
    for template in value:
        if not isinstance(template, dict) or not template:
            raise RMError(f"{name}: {template!r}: a template maps elements to Wyckoff site labels")
        clean: dict[str, tuple[str, ...]] = {}
        for el, sites in template.items():
            sites = [sites] if isinstance(sites, str) else sites
            if el not in atomic_numbers or not isinstance(sites, (list, tuple)) or not sites or not all(
                    isinstance(lab, str) and _site_key(lab)[0] > 0 for lab in sites):
                raise RMError(f"{name}: {el!r}: {sites!r}: expected an element and site labels like 4a")
            clean[str(el)] = tuple(sites)
        out.append(dict(sorted(clean.items())))
    return tuple(out)


def _wyckoff_from_text(text: str, name: str) -> dict[str, list[str]]:
    template: dict[str, list[str]] = {}
    for item in text.split(","):
        el, sep, sites = item.strip().partition(":")
        if not sep or not el.strip() or not sites.strip():
            raise RMError(f"{name} {text!r}: expected element:sites items like Na:4a,Cl:4b (O:4c+8d)")
        template.setdefault(el.strip(), []).extend(s.strip() for s in sites.split("+"))
    return template


def _site_key(label: str) -> tuple[int, str]:
    """``"48i"`` -> (48, "i"); (0, label) for text that is not a site label."""
    digits = label[:len(label) - len(label.lstrip("0123456789"))]
    letter = label[len(digits):]
    ok = digits and letter.isalpha() and len(letter) == 1
    return (int(digits), letter) if ok else (0, label)


def wyckoff_text(template: dict[str, tuple[str, ...]]) -> str:
    """The template as ``--wyckoff`` text: ``"Cl:4b,Na:4a"``."""
    return ",".join(f"{el}:{'+'.join(sites)}" for el, sites in template.items())


def wyckoff_counts(sg: int, template: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Atoms per element of the conventional cell that the template's sites hold."""
    mult = {wp.get_label(): wp.multiplicity for wp in _group(sg).Wyckoff_positions}
    return {el: sum(mult.get(lab, 0) for lab in sites) for el, sites in template.items()}


def make_spec(*, system: str | None = None, composition: str | None = None,
              molecule: str | None = None, natoms: str | tuple[int, int] = (2, 12),
              volumes: dict[str, float] | None = None, spacegroup: int | str | None = None,
              **kwargs: Any) -> StartSpec:
    """Build a :class:`StartSpec` from command-line style options (exactly one of
    ``system`` (``"Li-S"``), ``composition`` (``"Li2S"``), ``molecule`` (``"C4H6O"``))."""
    given = [(k, v) for k, v in (("system", system), ("composition", composition),
                                 ("molecule", molecule)) if v]
    if len(given) != 1:
        raise RMError("give exactly one of --system, --composition, --molecule "
                      f"(got {', '.join(k for k, _ in given) or 'none'})")
    mode, value = given[0]
    if mode == "system":
        elements = tuple(e.strip() for e in value.split("-") if e.strip())
        if len(set(elements)) != len(elements):
            raise RMError(f"--system {value!r}: an element appears twice")
        formula = None
    else:
        elements = tuple(_formula_counts(value))
        formula = value
    return StartSpec(mode=mode, elements=elements, formula=formula, natoms=parse_natoms(natoms),
                     volumes=dict(volumes or {}), spacegroup=parse_spacegroup(spacegroup), **kwargs)


# ----------------------------------------------------------------------------- compositions

def compositions(spec: StartSpec) -> list[dict[str, int]]:
    """Every composition a start of ``spec`` can have, in a fixed order (element -> count)."""
    if spec.mode == "molecule":
        return [_formula_counts(spec.formula)]
    lo, hi = spec.natoms
    if spec.mode == "composition":
        fu = _formula_counts(spec.formula)
        size = sum(fu.values())
        return [{el: n * c for el, c in fu.items()} for n in range(1, hi // size + 1)
                if lo <= n * size <= hi]
    out = []
    for counts in product(range(hi + 1), repeat=len(spec.elements)):
        if lo <= sum(counts) <= hi:
            out.append({el: c for el, c in zip(spec.elements, counts) if c})
    return out


def _numbers(counts: dict[str, int]) -> np.ndarray:
    return np.concatenate([np.full(c, atomic_numbers[el]) for el, c in counts.items()])


def min_separation_matrix(numbers: np.ndarray, factor: float, floor: float) -> np.ndarray:
    """Per-pair minimum separations (A), shape (n_atoms, n_atoms)."""
    r = covalent_radii[numbers]
    return np.maximum(floor, factor * (r[:, None] + r[None, :]))


# ----------------------------------------------------------------------------- cells

def random_cell(rng: np.random.Generator, volume: float, max_length_ratio: float,
                max_tilt: float) -> np.ndarray:
    """A random lower-triangular cell (rows a, b, c; A) of the given volume (A^3).

    The diagonal ``lx, ly, lz`` has ratios within ``max_length_ratio``; tilts are
    ``xy, xz = t * lx`` and ``yz = t * ly`` with ``|t| <= max_tilt``.
    """
    half = 0.5 * math.log(max_length_ratio)
    diag = np.exp(rng.uniform(-half, half, 3))
    t_xy, t_xz, t_yz = rng.uniform(-max_tilt, max_tilt, 3)
    cell = np.array([[diag[0], 0.0, 0.0],
                     [t_xy * diag[0], diag[1], 0.0],
                     [t_xz * diag[0], t_yz * diag[1], diag[2]]])
    return cell * (volume / np.prod(diag)) ** (1.0 / 3.0)


def cell_heights(cell: np.ndarray) -> np.ndarray:
    """Distances (A) between opposite faces of a cell: volume / face area, shape (3,)."""
    volume = abs(np.linalg.det(cell))
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    return volume / areas


def lammps_tilts(cell: np.ndarray) -> np.ndarray:
    """LAMMPS box parameters of a cell: (lx, ly, lz, xy, xz, yz) in A."""
    prism = Prism(np.asarray(cell, dtype=float))
    lx, ly, lz = np.diag(prism.lammps_tilt)
    xy, xz, yz = prism.lammps_tilt[1, 0], prism.lammps_tilt[2, 0], prism.lammps_tilt[2, 1]
    return np.array([lx, ly, lz, xy, xz, yz])


def to_lammps_frame(atoms: Atoms) -> Atoms:
    """The same crystal in LAMMPS' frame: lower-triangular cell with tilt factors within
    LAMMPS' bounds (``|xy|, |xz| <= lx/2``, ``|yz| <= ly/2``), atoms wrapped into it.

    Only the basis of the lattice changes (and a rotation), never the structure.
    """
    cell = np.asarray(atoms.cell, dtype=float)
    if np.linalg.det(cell) < 0:  # LAMMPS needs a right-handed basis
        cell = cell.copy()
        cell[2] *= -1
    prism = Prism(cell, pbc=True, reduce_cell=True)
    out = atoms.copy()
    out.set_cell(prism.lammps_cell, scale_atoms=False)
    out.positions = prism.vector_to_lammps(atoms.positions, wrap=True)
    out.wrap()
    return out


_SHIFTS = np.array(list(product((-1, 0, 1), repeat=3)), dtype=float)


def _place_random(rng: np.random.Generator, cell: np.ndarray, numbers: np.ndarray,
                  dmin: np.ndarray, periodic: bool) -> np.ndarray | None:
    """Random sequential addition in ``cell``; positions (n_atoms, 3) in A, or None.

    For periodic cells every image within one cell of the candidate is checked, which is
    exact because the caller guarantees every pair minimum is below the cell heights.
    """
    n = len(numbers)
    images = _SHIFTS @ cell if periodic else np.zeros((1, 3))
    pos = np.empty((n, 3))
    for i in range(n):
        cand = rng.random((_BATCH, 3)) @ cell  # (k, 3)
        if i:
            d_kjs = cand[:, None, None, :] - pos[None, :i, None, :] - images[None, None, :, :]
            dist_kj = np.sqrt((d_kjs ** 2).sum(-1)).min(-1)  # (k, i)
            ok = (dist_kj >= dmin[i, :i]).all(1)
        else:
            ok = np.ones(_BATCH, bool)
        if periodic:  # distance to its own images: the shortest lattice vector
            ok &= np.linalg.norm(images[np.any(_SHIFTS != 0, 1)], axis=1).min() >= dmin[i, i]
        good = np.flatnonzero(ok)
        if good.size == 0:
            return None
        pos[i] = cand[good[0]]
    return pos


def _random_crystal(rng: np.random.Generator, spec: StartSpec, numbers: np.ndarray,
                    volume: float) -> Atoms:
    dmin = min_separation_matrix(numbers, spec.minsep_factor, spec.minsep_floor)
    for _ in range(_CELL_TRIES):
        cell = random_cell(rng, volume, spec.max_length_ratio, spec.max_tilt)
        if cell_heights(cell).min() < dmin.max():
            continue
        for _ in range(_PLACEMENT_TRIES):
            pos = _place_random(rng, cell, numbers, dmin, periodic=True)
            if pos is not None:
                return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)
    raise RMError(f"could not place {Atoms(numbers).get_chemical_formula()} in {volume:.1f} A^3 "
                  f"with the minimum separations after {_CELL_TRIES} cells; lower --minsep-factor "
                  "or raise --volume-factor")


def _random_molecule(rng: np.random.Generator, spec: StartSpec, numbers: np.ndarray) -> Atoms:
    n = len(numbers)
    dmin = np.full((n, n), spec.minsep_floor)
    box = np.diag(spec.box)
    for _ in range(_PLACEMENT_TRIES * _CELL_TRIES):
        pos = _place_random(rng, box, numbers, dmin, periodic=False)
        if pos is not None:
            return Atoms(numbers=numbers, positions=pos, cell=box, pbc=False)
    raise RMError(f"could not place {spec.formula} in a {spec.box} A box with minimum distance "
                  f"{spec.minsep_floor} A; use a larger box")


# ----------------------------------------------------------------------------- space groups

@cache
def _group(sg: int):
    from pyxtal.symmetry import Group

    return Group(sg)


@lru_cache(maxsize=4096)
def compatible(sg: int, counts: tuple[int, ...]) -> bool:
    """Whether pyxtal can place atoms of these counts on Wyckoff positions of ``sg``."""
    return bool(_group(sg).check_compatible(list(counts))[0])


@lru_cache(maxsize=64)
def _tolerances(species: tuple[str, ...], factor: float, floor: float):
    """pyxtal tolerance matrix holding our per-pair minimum separations (A)."""
    from pyxtal.tolerance import Tol_matrix

    numbers = np.array([atomic_numbers[el] for el in species])
    dmin = min_separation_matrix(numbers, factor, floor)
    pairs = [(species[i], species[j], float(dmin[i, j]))
             for i in range(len(species)) for j in range(i, len(species))]
    return Tol_matrix(*pairs, prototype="atomic")


class _OutOfChecks(Exception):
    """pyxtal used up the distance checks of one start (:data:`PYXTAL_CHECKS`)."""


#: Distance checks pyxtal has made for the start being drawn (reset per start), and the
#: bound in force (None outside a start's draw: other uses of pyxtal are not bounded).
_checks: dict[str, int | None] = {"used": 0, "limit": None}


@cache
def _tol_matrix(*args: Any, **kwargs: Any):
    from pyxtal.tolerance import Tol_matrix

    return Tol_matrix(*args, **kwargs)


def _shared_tol_matrix(*args: Any, **kwargs: Any):
    """One pyxtal ``Tol_matrix`` per set of arguments (see :func:`_share_default_tolerances`);
    each call is one distance check of pyxtal, counted against the start's budget."""
    _checks["used"] += 1
    if _checks["limit"] is not None and _checks["used"] > _checks["limit"]:
        raise _OutOfChecks(f"{_checks['limit']} distance checks")
    return _tol_matrix(*args, **kwargs)


def _share_default_tolerances() -> None:
    """Let pyxtal's distance checks (``pyxtal.operations.check_distance``/``check_images``)
    share one default ``Tol_matrix`` instead of building one (~9 ms) per call: they only
    read it, and its values are the same, so starts are unchanged. Measured on TiU2 in
    P6/mmm (a start pyxtal cannot place, 28k such calls): 260 of 426 s went there."""
    import pyxtal.operations as ops

    ops.Tol_matrix = _shared_tol_matrix


def _spacegroup_crystal(rng: np.random.Generator, spec: StartSpec, counts: dict[str, int],
                        volume: float, sg: int, sites: dict[str, tuple[str, ...]] | None = None) -> Atoms | None:
    """A start with space group ``sg`` from pyxtal (on the Wyckoff ``sites`` when given), or
    None if it cannot be made within :data:`PYXTAL_CHECKS` distance checks."""
    _share_default_tolerances()
    _checks.update(used=0, limit=PYXTAL_CHECKS)
    try:
        return _pyxtal_draws(rng, spec, counts, volume, sg, sites)
    except _OutOfChecks:
        log.debug("pyxtal used %d distance checks on %s in %d", PYXTAL_CHECKS, counts, sg)
        return None
    finally:
        _checks["limit"] = None


def _pyxtal_draws(rng: np.random.Generator, spec: StartSpec, counts: dict[str, int],
                  volume: float, sg: int, sites: dict[str, tuple[str, ...]] | None) -> Atoms | None:
    """Up to :data:`_PYXTAL_TRIES` pyxtal placements in ``sg``; the first valid one, or None."""
    from pyxtal import pyxtal
    from pyxtal.lattice import Lattice

    species = list(counts)
    num = [counts[el] for el in species]
    on_sites = {"sites": [list(sites[el]) for el in species]} if sites else {}
    numbers = _numbers(counts)
    for _ in range(_PYXTAL_TRIES):
        lattice = Lattice(_group(sg).lattice_type, volume=volume, random_state=rng)
        crystal = pyxtal()
        try:
            crystal.from_random(3, sg, species, num, lattice=lattice, random_state=rng, max_count=1,
                                tm=_tolerances(tuple(species), spec.minsep_factor, spec.minsep_floor), **on_sites)
        except _OutOfChecks:
            raise
        except Exception as exc:  # noqa: BLE001 - pyxtal signals failure with assorted types
            log.debug("pyxtal failed for %s in %d: %s", counts, sg, exc)
            continue
        if not crystal.valid:
            continue
        atoms = to_lammps_frame(crystal.to_ase())
        if min_distance_ok(atoms, spec.minsep_factor, spec.minsep_floor):
            return atoms[np.argsort(_order_key(atoms.numbers, numbers), kind="stable")]
    return None


def _order_key(numbers: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Sort key putting atoms in the element order of ``reference``."""
    order = {z: i for i, z in enumerate(dict.fromkeys(reference.tolist()))}
    return np.array([order[z] for z in numbers.tolist()])


def min_distance_ok(atoms: Atoms, factor: float, floor: float) -> bool:
    """Whether every pair (all periodic images) is at least its minimum separation apart."""
    from ase.neighborlist import neighbor_list

    dmin = min_separation_matrix(atoms.numbers, factor, floor)
    i, j, d = neighbor_list("ijd", atoms, float(dmin.max()))
    return bool(np.all(d >= dmin[i, j] - 1e-9))


# ----------------------------------------------------------------------------- public

def make_start(spec: StartSpec, run_id: int, seed: int) -> Atoms:
    """The random start of run ``run_id`` of a search seeded with ``seed``.

    Depends only on ``(spec, run_id, seed)``: the generator is
    ``np.random.default_rng([seed, run_id])`` and pyxtal draws from the same generator.
    See the module docstring for what ``atoms.info`` holds.
    """
    if run_id < 0 or seed < 0:
        raise RMError(f"run_id={run_id} and seed={seed} must be >= 0")
    rng = np.random.default_rng([seed, run_id])
    comps = compositions(spec)
    if spec.wyckoff:  # the cells of the templates
        comps = [c for c in comps if any(wyckoff_counts(spec.spacegroup, t) == c for t in spec.wyckoff)]
    elif isinstance(spec.spacegroup, int):  # prefer compositions that fit the group, if any
        fitting = [c for c in comps if compatible(spec.spacegroup, tuple(c.values()))]
        comps = fitting or comps
    counts = comps[int(rng.integers(len(comps)))]
    numbers = _numbers(counts)
    info: dict[str, Any] = {"run_id": int(run_id), "seed": int(seed), "spacegroup_start": None,
                            "start_status": "ok", "volume_factor": None}
    if spec.mode == "molecule":
        atoms = _random_molecule(rng, spec, numbers)
        atoms.info.update(info, start_kind="molecule")
        return atoms
    factor = float(rng.uniform(*spec.volume_factor))
    volume = factor * sum(spec.volumes[el] * c for el, c in counts.items())
    info["volume_factor"] = factor
    atoms = None
    if spec.spacegroup is not None and not (spec.spacegroup == "mixed" and run_id % 2):
        atoms, sg, status = _symmetric(rng, spec, counts, volume)
        info.update(spacegroup_start=sg, start_status=status)
    if atoms is None:
        atoms = _random_crystal(rng, spec, numbers, volume)
        atoms.info.update(info, start_kind="random")
    else:
        atoms.info.update(info, start_kind="spacegroup")
    return atoms


def _symmetric(rng: np.random.Generator, spec: StartSpec, counts: dict[str, int],
               volume: float) -> tuple[Atoms | None, int | None, str]:
    """(atoms or None, space group, status) for a space-group start. A group drawn with
    ``spec.spacegroup_weights`` is placed in its conventional cell (``centring`` times the
    atoms) and the start is the primitive cell of the placement."""
    key = tuple(counts.values())
    formula = Atoms(_numbers(counts)).get_chemical_formula()
    m = 1  # lattice points of the cell pyxtal fills
    if spec.spacegroup in DRAWN_GROUPS and spec.spacegroup_weights:
        groups = [sg for sg, w in spec.spacegroup_weights.items()
                  if w > 0 and compatible(sg, tuple(n * centring(sg) for n in key))]
        if not groups:
            return None, None, (f"fallback: no space group of --spacegroup-weights holds {formula}; "
                                "random start without symmetry")
        w = np.array([spec.spacegroup_weights[sg] for sg in groups])
        sg = int(groups[int(rng.choice(len(groups), p=w / w.sum()))])
        m = centring(sg)
    elif spec.spacegroup in DRAWN_GROUPS:
        for _ in range(_SG_DRAWS):
            sg = int(rng.integers(1, 231))
            if compatible(sg, key):
                break
        else:  # P1 takes any composition, so this is practically unreachable
            return None, None, f"fallback: no compatible space group drawn for {formula}"
    else:
        sg = int(spec.spacegroup)
        if not compatible(sg, key):
            return None, None, (f"fallback: {formula} does not fit the Wyckoff positions of "
                                f"space group {sg}; random start without symmetry")
    sites = None
    if spec.wyckoff:
        fits = [t for t in spec.wyckoff if wyckoff_counts(sg, t) == counts]
        sites = fits[int(rng.integers(len(fits)))]
    atoms = _spacegroup_crystal(rng, spec, {el: n * m for el, n in counts.items()}, volume * m, sg, sites)
    if atoms is not None and m > 1:
        atoms = _primitive(atoms, _numbers(counts), spec)
    if atoms is None:
        where = f" on {wyckoff_text(sites)}" if sites else ""
        return None, None, (f"fallback: pyxtal could not place {formula} in space group {sg}{where} "
                            "with the minimum separations; random start without symmetry")
    if sites:
        atoms.info["wyckoff"] = wyckoff_text(sites)
    return atoms, sg, "ok"


def centring(sg: int) -> int:
    """Lattice points per conventional cell of space group ``sg`` (pyxtal's setting)."""
    return CENTRING[_group(sg).symbol[0]]


def _primitive(atoms: Atoms, numbers: np.ndarray, spec: StartSpec) -> Atoms | None:
    """The primitive cell of an exactly symmetric placement (spglib, 1e-4 A), in LAMMPS' frame and
    in the element order of ``numbers``; None unless it has as many atoms."""
    import spglib

    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    prim = spglib.standardize_cell(cell, to_primitive=True, no_idealize=True, symprec=1e-4)
    if prim is None or len(prim[2]) != len(numbers):
        return None
    out = to_lammps_frame(Atoms(numbers=prim[2], cell=prim[0], scaled_positions=prim[1], pbc=True))
    if not min_distance_ok(out, spec.minsep_factor, spec.minsep_floor):
        return None
    return out[np.argsort(_order_key(out.numbers, numbers), kind="stable")]
