"""The public Python API, in the style of ASE: Atoms in, Atoms out, files where the CLI writes them.

    >>> import rmsearch
    >>> from ase.build import bulk
    >>> out = rmsearch.relax_atoms(bulk("C", "diamond", a=3.7), "model:carbon-uf3")  # doctest: +SKIP
    >>> out.status, out.energy_per_atom, out.atoms.get_volume()               # doctest: +SKIP
    >>> run = rmsearch.search("model:carbon-uf3", system="C", natoms="2-8", nruns=20,
    ...                       out="c_run")                                     # doctest: +SKIP
    >>> result = run.analyze()                                                # doctest: +SKIP
    >>> result.clusters[0].get_potential_energy()                             # doctest: +SKIP

- :func:`export`: a trained model (or ``model:NAME``) -> potential directory (``rmsearch export``);
- :func:`search`: random starts relaxed into a run directory (``rmsearch launch``), returned
  as a :class:`RunDirectory` (``.config``, ``.records``, ``.status()``, ``.analyze()``);
- :func:`analyze`: a run directory -> :class:`AnalysisResult` (``.clusters`` as ASE
  ``Atoms`` with their energies, ``.structures()`` as pymatgen objects; ``rmsearch analyze``);
- :func:`relax_atoms` / :func:`iter_relax`: relax given structures with the search's protocol;
  :func:`relax_file` relaxes every structure of a file or folder (``rmsearch relax``);
- ``rmsearch.Calculator``: the ASE calculator of any potential (:mod:`rmsearch.calculator`).

Why ``relax_atoms`` and not ``relax``: ``rmsearch.relax`` is the module of the relax
protocol (:mod:`rmsearch.relax`: stop rule, tolerances, statuses, core repulsion). A
function of that name on the package would be replaced by the module as soon as anything
runs ``import rmsearch.relax`` (Python sets a submodule as its package's attribute), so
``rmsearch.relax(...)`` would work or fail depending on import order.

Units: eV, A, eV/A, stress eV/A^3 (ASE Voigt order); pressures in GPa where named ``_gpa``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from rmdata.errors import RMError

log = logging.getLogger(__name__)


def open_potential(potential):
    """A loaded ``Potential`` from a potential directory, ``model:NAME`` or a ``Potential``."""
    from rmsearch.potentials import Potential, load_potential
    from rmsearch.registry import resolve_potential

    if isinstance(potential, Potential):
        return potential
    return load_potential(resolve_potential(os.fspath(potential)))


def check_elements(atoms: Atoms, elements: Sequence[str], origin: str) -> None:
    """RMError naming ``origin`` when ``atoms`` hold an element outside ``elements``."""
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(elements))
    if unknown:
        raise RMError(f"{origin}: elements {unknown} are not in the potential ({' '.join(elements)}); "
                      "use a potential fitted on them")


def iter_relax(structures: Iterable[Atoms], potential, *, seed: int = 0, **settings: Any
               ) -> Iterator[Any]:
    """Relax ``structures`` one after another with one LAMMPS instance; yields one
    ``RelaxOutcome`` per structure (status, energy in eV, stress in eV/A^3, final atoms).

    ``settings``: fields of :class:`rmsearch.relax.RelaxSettings` (``fmax`` eV/A,
    ``smax_gpa`` GPa, ``max_steps``, ``optimizer``, ``kick`` A, ...). The kick stage of
    structure i draws from ``default_rng([seed, i])``. A failing relaxation never raises; it
    has a failure status.
    """
    from rmsearch.relax import Relaxer, RelaxSettings

    pot = open_potential(potential)
    with Relaxer(pot, RelaxSettings(**settings)) as relaxer:
        for i, atoms in enumerate(structures):
            check_elements(atoms, pot.elements, f"structure {i}")
            yield relaxer.relax(atoms, rng=np.random.default_rng([seed, i]))


def relax_atoms(atoms: Atoms | Sequence[Atoms], potential, *, seed: int = 0, **settings: Any):
    """Relax one structure (returns its ``RelaxOutcome``) or a list (returns a list).

    ``potential``: a potential directory, ``model:NAME`` or a loaded ``Potential``; other
    keywords as :func:`iter_relax`. ``outcome.atoms`` is the final structure,
    ``outcome.status`` ``converged``, ``not_converged``, ``lost_atoms``, ``exploded``,
    ``collapsed``, ``nan`` or ``error: ...``.
    """
    if isinstance(atoms, Atoms):
        return next(iter_relax([atoms], potential, seed=seed, **settings))
    return list(iter_relax(atoms, potential, seed=seed, **settings))


def relax_file(inputs: str | os.PathLike, potential, output: str | os.PathLike, *, seed: int = 0,
               overwrite: bool = False, progress: bool = False, **settings: Any) -> dict[str, Any]:
    """Relax every structure of ``inputs`` (an ASE-readable file or a folder of them) and
    write the final structures to the extxyz ``output`` (atomically; never over an input).

    Each frame's ``info``: ``input_index`` (0-based, in reading order), ``source_id``,
    ``status``, ``energy`` (eV), ``energy_per_atom`` (eV/atom), ``pressure_gpa`` (GPa,
    positive = compressed), ``volume_per_atom`` (A^3/atom, crystals), ``fmax`` (eV/A),
    ``n_force_calls``. Returns a summary: counts per status and the output path.
    """
    import ase.io

    from rmdata.cliutils import check_output
    from rmdata.datasets import load_structures
    from rmdata.utils import atomic_output
    from rmsearch.records import record_from_outcome

    output = Path(output)
    inputs = Path(inputs)
    if output.suffix not in (".xyz", ".extxyz"):
        raise RMError(f"-o {output}: the output is extxyz; name it *.extxyz or *.xyz")
    check_output(output, inputs=[inputs], overwrite=overwrite)
    if output.exists() and inputs.is_dir() and inputs.resolve() in output.resolve().parents:
        raise RMError(f"-o {output}: is one of the inputs in {inputs}; choose another output name")
    from rmsearch.relax import RelaxSettings

    RelaxSettings(**settings)  # bad settings are refused before any work
    pot = open_potential(potential)
    items = list(load_structures(input_path=inputs, bad=[]))
    for sid, atoms in items:
        check_elements(atoms, pot.elements, f"{inputs} ({sid})")
    frames, counts = [], {}
    outcomes = iter_relax([a for _, a in items], pot, seed=seed, **settings)
    if progress:
        from tqdm import tqdm

        outcomes = tqdm(outcomes, total=len(items), unit="structure", desc="relax")
    for i, ((sid, start), outcome) in enumerate(zip(items, outcomes, strict=True)):
        rec = record_from_outcome(outcome, start, run_id=i, seed=seed, wall_s=float(outcome.wall_s))
        atoms = rec.to_atoms()
        atoms.info.pop("run_id")
        atoms.info.update(input_index=i, source_id=sid, energy=rec.energy, fmax=rec.fmax,
                          n_force_calls=rec.n_force_calls)
        if not atoms.pbc.all():
            atoms.info.pop("volume_per_atom", None)
            atoms.info.pop("pressure_gpa", None)
        frames.append(atoms)
        counts[rec.status] = counts.get(rec.status, 0) + 1
    with atomic_output(output) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return {"output": str(output), "n_structures": len(frames), "status_counts": counts}


# ----------------------------------------------------------------------------- export


def export(model: str | os.PathLike, out: str | os.PathLike, *, training: str | os.PathLike | None = None,
           backend: str = "mace", verify: bool = True, overwrite: bool = False):
    """Write the potential directory ``out`` (what :func:`search` and :class:`rmsearch.Calculator`
    take) from a ``mace_run_train`` model file, or copy a shipped ``model:NAME`` (its files
    checked against its card); returns the loaded :class:`rmsearch.potentials.Potential`.

    ``training``: the rmdata training extxyz, for the per-element volumes (A^3/atom) the
    random starts use (covalent-radius volumes without it). ``verify``: check LAMMPS' forces
    and stress against MACE's own calculator (1e-6 eV/A, eV/A^3). ``rmsearch export``.
    """
    from rmdata.cliutils import check_output
    from rmsearch.potentials import export_potential, load_potential
    from rmsearch.registry import PREFIX, copy_model

    shipped = os.fspath(model).startswith(PREFIX)
    out = check_output(Path(out), inputs=[training, None if shipped else model], overwrite=overwrite,
                       folder=True)
    if shipped:
        copy_model(os.fspath(model), out, overwrite=overwrite)
        return load_potential(out)
    return export_potential(model, out, training=training, backend=backend, verify=verify,
                            overwrite=overwrite)


# ----------------------------------------------------------------------------- search


def search_options() -> tuple[str, ...]:
    """The keyword options of :func:`search` that describe the search (stored in
    ``config.json``): the fields of :class:`rmsearch.options.SearchOptions`."""
    from rmsearch.options import OPTION_NAMES

    return OPTION_NAMES


def search(potential: str | os.PathLike | None = None, *, out: str | os.PathLike, nruns: int | None = None,
           workers: int | None = None, progress: bool = False, device: str = "cpu", batch: int | None = None,
           **options: Any) -> RunDirectory:
    """Relax ``nruns`` random starts with ``potential`` into the run directory ``out``, or
    resume ``out``; returns it as a :class:`RunDirectory` (``rmsearch launch``).

    potential: a potential directory (:func:`export`), ``model:NAME``, or None to resume
    with the stored one. options (:func:`search_options`, as ``rmsearch launch``): one of
    ``system`` ("Li-S": any Li_a S_b), ``composition`` ("Li2S": whole formula units) or
    ``molecule`` ("C4H6O"); ``natoms`` (8, "2-12" or (2, 12) atoms per cell);
    ``spacegroup`` (1-230, "random" or "mixed"); ``volume_factor`` ((0.8, 1.2) or "0.8-1.2");
    ``minsep_factor``; ``seed`` (run r starts from ``rng([seed, r])``); the relaxation's
    ``fmax`` (eV/A), ``smax_gpa`` (GPa), ``max_steps`` (force calls), ``dtype``,
    ``optimizer``, ``kick`` (A), ``kick_fmax`` (eV/A), ``keep_symmetry``,
    ``release_symmetry``; ``run_timeout_s`` (s). How it runs, never stored: ``workers``
    (processes; default: the cores available), ``device``/``batch`` (the batched path),
    ``progress`` (a bar on stderr).

    A new run directory needs ``potential`` and ``nruns``. On resume, options left out keep
    their stored values and given ones must agree with them (``RMError`` otherwise);
    ``nruns`` may grow. Only the run ids without a record are run. The summary of this
    launch is ``RunDirectory.last_launch``.
    """
    from rmsearch.registry import resolve_potential
    from rmsearch.runner import launch
    from rmsearch.starts import parse_range

    allowed = search_options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"search(): unknown option(s) {', '.join(unknown)}; the options are {', '.join(allowed)}")
    if isinstance(options.get("volume_factor"), str):
        options["volume_factor"] = parse_range(options["volume_factor"], "volume_factor")
    summary = launch(out, potential=resolve_potential(potential), nruns=nruns, workers=workers,
                     progress=progress, device=device, batch=batch, **options)
    rundir = RunDirectory(out)
    rundir.last_launch = summary
    return rundir


class RunDirectory(os.PathLike):
    """A search's run directory (``rmsearch launch -o DIR``; layout in :mod:`rmsearch.runner`).

    ``config``: its ``config.json``; ``records``: every readable run record, by run id;
    :meth:`status`: progress and counts (``rmsearch status``); :meth:`analyze`: the
    analysis (``rmsearch analyze``). Usable wherever a path is (``os.fspath``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        #: The summary of the :func:`search` call that returned this object (None otherwise).
        self.last_launch: dict[str, Any] | None = None
        if not (self.path / "config.json").is_file():
            raise RMError(f"{self.path}: not a run directory (no config.json); create it with rmsearch.search")

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDirectory({os.fspath(self.path)!r})"

    @property
    def config(self) -> dict[str, Any]:
        """The search configuration (``config.json``: nruns, seed, start, relax, potential, ...)."""
        from rmsearch.config import read_config

        return read_config(self.path)

    @property
    def records(self) -> list[Any]:
        """Every readable :class:`rmsearch.records.RunRecord`, sorted by run id (broken shard
        lines are skipped, as the analysis does; ``record.to_atoms()`` is the final structure)."""
        from rmsearch.analysis.collect import load_run

        return load_run(self.path).records

    def status(self) -> dict[str, Any]:
        """``nruns``, ``done``, ``converged``, ``not_converged``, ``failed``, ``remaining``,
        ``status_counts``, the best energy per atom (eV/atom), ``problems`` (``rmsearch status``)."""
        from rmsearch.runner import rundir_status

        return rundir_status(self.path)

    def analyze(self, **options: Any) -> AnalysisResult:
        """:func:`analyze` this run directory."""
        return analyze(self.path, **options)


# ----------------------------------------------------------------------------- analyze


def analyze(rundir: str | os.PathLike, reference: str | os.PathLike | None = None, *, top: int = 20,
            **options: Any) -> AnalysisResult:
    """Deduplicate, rank and report the search in ``rundir`` (``rmsearch analyze``): writes
    ``results.db``, ``final_structures.extxyz`` and ``report/`` there and returns an
    :class:`AnalysisResult`.

    ``reference``: a structure file or ``NAME:SPLIT`` to match against; ``top``: clusters
    in the report's table. Other options as :func:`rmsearch.analysis.analyze.analyze`
    (``workers``, ``frac``, ``max_volume_factor``, ``energy_bin`` eV/atom, ``volume_bin``,
    ``elemental`` eV/atom, ``snap``, ...).
    """
    from rmsearch.analysis.analyze import analyze as run_analysis

    data = run_analysis(rundir, reference, top, **options)
    return AnalysisResult(Path(rundir), data)


class AnalysisResult:
    """What :func:`analyze` found. ``data``: the report (``report/report.json``: counts,
    ``top_clusters``, hull, matches); ``report``: the path of ``report/index.html``.

    ``clusters``: one ``Atoms`` per cluster of distinct structures (its representative, the
    lowest-energy member), in rank order (above the pseudo hull, then energy per atom);
    ``atoms.get_potential_energy()`` is its energy (eV) and ``atoms.info`` holds
    ``cluster_id`` (the rank), ``hits``, ``run_id``, ``energy_per_atom`` (eV/atom),
    ``spacegroup`` (at 0.01 A), ``e_hull`` (eV/atom, where a hull was built).
    :meth:`structures`: the same as pymatgen ``Structure`` (``Molecule`` for molecules).
    """

    def __init__(self, rundir: Path, data: dict[str, Any]):
        self.rundir = rundir
        self.data = data
        self.report = rundir / "report" / "index.html"
        self._clusters: list[Atoms] | None = None

    def __repr__(self) -> str:
        return f"<AnalysisResult of {os.fspath(self.rundir)!r}: {self.data['n_clusters']} clusters>"

    @property
    def clusters(self) -> list[Atoms]:
        if self._clusters is None:
            self._clusters = cluster_atoms(self.rundir)
        return self._clusters

    def structures(self) -> list[Any]:
        """``clusters`` as pymatgen ``Structure`` (periodic) or ``Molecule`` objects."""
        from pymatgen.io.ase import AseAtomsAdaptor

        return [AseAtomsAdaptor.get_structure(a) if a.pbc.all() else AseAtomsAdaptor.get_molecule(a)
                for a in self.clusters]


def cluster_atoms(rundir: str | os.PathLike) -> list[Atoms]:
    """The representatives of the clusters of an analysed run directory (its ``results.db``),
    ranked, as ``Atoms`` with their energy and stress and the cluster's key-value pairs in
    ``info`` (see :class:`AnalysisResult`)."""
    import ase.db
    from ase.calculators.singlepoint import SinglePointCalculator

    from rmsearch.analysis.collect import DB_NAME, load_run

    path = Path(rundir) / DB_NAME
    if not path.is_file():
        raise RMError(f"{rundir}: not analysed yet (no {DB_NAME}); run rmsearch.analyze first")
    records = {r.run_id: r for r in load_run(rundir).records}
    rows = sorted(ase.db.connect(path).select(representative=True), key=lambda row: row.cluster_id)
    out = []
    for row in rows:
        rec = records[row.run_id]
        atoms = rec.to_atoms()
        atoms.info.update({k: row.get(k) for k in ("cluster_id", "hits", "spacegroup", "spacegroup_symbol", "e_hull")
                           if row.get(k) is not None})
        results = {"energy": rec.energy}
        if atoms.pbc.all():
            results["stress"] = np.asarray(rec.stress, dtype=float)
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out
