"""Turn a run directory into an answer: collect, validate, deduplicate, score, hull, match, report.

:func:`analyze` is the one entry point (``rmsearch analyze RUNDIR`` calls it). Everything
derives from the run records: runs that did not converge are counted per status but never
ranked; converged structures that fail the validity rules are counted and listed apart.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from rmdata.errors import RMError
from rmdata.utils import atomic_output, provenance
from rmsearch.analysis import plots
from rmsearch.analysis.collect import (
    FINAL_XYZ,
    load_run,
    write_final_structures,
    write_results_db,
)
from rmsearch.analysis.dedupe import (
    DEFAULT_ENERGY_BIN,
    DEFAULT_VOLUME_BIN,
    Cluster,
    dedupe,
)
from rmsearch.analysis.fingerprint import FP_RADIUS
from rmsearch.analysis.hull import pseudo_hull
from rmsearch.analysis.match import csp_match, match_references
from rmsearch.analysis.metrics import generation_metrics
from rmsearch.analysis.molecules import (
    plot_molecules,
    read_known_smiles,
    score_molecules,
)
from rmsearch.analysis.references import load_references
from rmsearch.analysis.report import write_report
from rmsearch.analysis.score import ClusterScore, score_clusters
from rmsearch.analysis.snap import DEFAULT_SNAP_TOP, Snapped, snap_clusters
from rmsearch.analysis.validity import (
    DEFAULT_FRAC,
    DEFAULT_MAX_VOLUME_FACTOR,
    split_valid,
)
from rmsearch.records import RunRecord

log = logging.getLogger(__name__)


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, numpy scalars -> Python: strict JSON for the report."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.item())
    return obj


def analyze(rundir: str | os.PathLike, reference: str | os.PathLike | None = None, top: int = 20, *,
            workers: int = 1, frac: float = DEFAULT_FRAC, max_volume_factor: float = DEFAULT_MAX_VOLUME_FACTOR,
            energy_bin: float = DEFAULT_ENERGY_BIN, volume_bin: float = DEFAULT_VOLUME_BIN, match_top_k: int = 20,
            metrics: bool = True, elemental: dict[str, float] | None = None,
            known_smiles: str | os.PathLike | None = None, posebusters: bool = True, snap: bool = False,
            fp_radius: float | None = FP_RADIUS, snap_top: int | None = DEFAULT_SNAP_TOP) -> dict[str, Any]:
    """Analyse ``rundir`` and write ``results.db``, ``final_structures.extxyz`` and ``report/``.

    Args:
        rundir: run directory (``config.json``, ``shards/*.jsonl``).
        reference: structure file or ``NAME:SPLIT`` to match against and compute
            generation metrics with (optional).
        top: number of clusters in the report table (their CIFs are written).
        workers: processes for deduplication and fingerprints.
        frac, max_volume_factor: validity rules (see :mod:`rmsearch.analysis.validity`).
        energy_bin, volume_bin: dedupe bins (eV/atom, ln V; see :mod:`rmsearch.analysis.dedupe`).
        match_top_k: clusters per composition tried against each reference.
        metrics: compute generation metrics when a reference is given.
        elemental: reference energies per atom (eV/atom) of pure elements for the pseudo hull.
        known_smiles: molecule searches: SMILES list whose isomers count as known
            (default: rmdata's offline molecule set); see :mod:`rmsearch.analysis.molecules`.
        posebusters: molecule searches: run the PoseBusters checks where installed.

    Returns:
        The report data (also written to ``report/report.json``).
    """
    if top < 1:
        raise RMError(f"--top {top}: must be at least 1")
    t0 = time.perf_counter()
    run = load_run(rundir)
    refs = load_references(reference) if reference is not None else None  # fail before writing anything
    known = read_known_smiles(known_smiles) if run.config.get("molecule") else None
    records = {r.run_id: r for r in run.records}
    report_dir = run.rundir / "report"

    timings = _Laps(t0)
    timings.lap("load")
    valid_ids, invalid = split_valid(run.usable, frac=frac, max_volume_factor=max_volume_factor)
    timings.lap("validity")
    result = dedupe(((rid, records[rid].to_atoms(), records[rid].energy_per_atom) for rid in valid_ids),
                    energy_bin=energy_bin, volume_bin=volume_bin, workers=workers, fp_radius=fp_radius)
    timings.lap("dedupe")
    clusters, snap_info, snapped = result.clusters, None, {}
    if snap and any(records[c.representative].pbc and all(records[c.representative].pbc) for c in clusters):
        snap_info, clusters, snapped = _snap(clusters, records, run.config, workers, energy_bin, volume_bin,
                                             snap_top)
    timings.lap("snap")
    ranked, hull_data = _rank(clusters, elemental, snapped)
    scores = score_clusters(ranked, records, workers=workers)
    timings.lap("hull_and_space_groups")
    for s in scores:
        if s.representative in snapped:
            sn = snapped[s.representative]
            s.snap = {"status": sn.status, "energy_per_atom": sn.energy_per_atom, "delta_e": sn.delta_e,
                      "spacegroups": sn.spacegroups}
    for s in scores:
        if s.representative in hull_data["e_hull_of"]:
            s.e_ex, s.e_hull = hull_data["e_hull_of"][s.representative]

    ann = _annotations(scores, invalid)
    # the extxyz in a forked process (workers > 1) while this one writes the database
    writer = _start(write_final_structures, run.usable, run.rundir / FINAL_XYZ, ann) if workers > 1 else None
    write_results_db(run, ann)
    if writer is None:
        write_final_structures(run.usable, run.rundir / FINAL_XYZ, ann)
    else:
        _finish(writer, run.rundir / FINAL_XYZ)
    timings.lap("results_db_and_final_structures")
    cifs = _write_cifs(scores[:top], records, report_dir, snapped)
    valid_recs = [records[rid] for rid in valid_ids]
    plot_paths = _write_plots(scores, valid_recs, hull_data, report_dir, top)
    timings.lap("cifs_and_plots")

    hull = hull_data["hull"]
    data: dict[str, Any] = {
        "title": run.rundir.resolve().name, "rundir": str(run.rundir), "n_records": len(run.records),
        "status_counts": run.status_counts, "n_usable": len(run.usable), "n_invalid": len(invalid),
        "invalid": invalid, "problems": run.problems,
        "validity": {"frac": frac, "max_volume_factor": max_volume_factor},
        "dedupe": {"n_structures": result.n_structures, "n_clusters": len(scores),
                   "n_clusters_before_snap": len(result.clusters),
                   "n_candidate_groups": result.n_candidate_groups,
                   "largest_candidate_group": result.largest_candidate_group,
                   "n_matcher_calls": result.n_matcher_calls, "n_quick_matches": result.n_quick_matches,
                   "n_all_pairs": result.n_all_pairs,
                   "n_pairs_same_composition": result.n_pairs_same_composition, "wall_s": result.wall_s,
                   "settings": result.settings},
        "hull_note": hull_data["note"], "elements": hull_data["elements"],
        "hull_vertices": [{"formula": s.formula, "e_ex": s.e_ex, "cluster_id": s.cluster_id} for s in scores
                          if hull is not None and s.e_hull is not None and abs(s.e_hull) < 1e-9],
        "top_clusters": [dict(s.to_dict(), cif=cifs.get(s.cluster_id, "")) for s in scores[:top]],
        "n_clusters": len(scores), "plots": plot_paths, "snap": snap_info,
        "provenance": provenance(run.config, run.config.get("seed")),
    }
    if known is not None:
        data["molecules"] = score_molecules(run.records, nstarts=int(run.config["nruns"]), known=known,
                                            posebusters=posebusters)
        plots_dir = report_dir / "plots"
        plot_molecules(data["molecules"], plots_dir / "molecules.png")
        data["plots"]["molecules"] = "plots/molecules.png"
    if refs is not None:
        data.update(_compare(scores, invalid, records, refs, str(reference), match_top_k, metrics, workers))
        adaptor = AseAtomsAdaptor()
        periodic = [(rid, adaptor.get_structure(records[rid].to_atoms()), records[rid].energy_per_atom)
                    for rid in valid_ids if all(records[rid].pbc)]
        data["csp"] = csp_match(periodic, refs)
    timings.lap("molecules_and_references")
    data["wall_s"] = time.perf_counter() - t0
    data["timings_s"] = timings.steps
    data = _jsonable(data)
    write_report(data, report_dir)
    log.info("report written to %s (%.1f s)", report_dir / "index.html", data["wall_s"])
    return data


def _start(fn, *args) -> Any:
    """Run ``fn(*args)`` in a forked child (it shares this process's memory: nothing is pickled)."""
    import multiprocessing

    def target() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # _finish raises the one-line error; this says why
            log.error("%s: %s", type(exc).__name__, exc)
            os._exit(1)

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    return proc


def _finish(proc: Any, what: Path) -> None:
    """Wait for a child of :func:`_start`; raise :class:`RMError` if it failed."""
    proc.join()
    if proc.exitcode != 0:
        raise RMError(f"{what}: writing failed in a child process (exit code {proc.exitcode})")


class _Laps:
    """Wall time (s) of each analysis step, for the report (``timings_s``) and the log."""

    def __init__(self, t0: float):
        self.last, self.steps = t0, {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = round(now - self.last, 3)
        self.last = now
        log.info("analysis step %s: %.1f s", name, self.steps[name])


def _snap(clusters: list[Cluster], records: dict[int, RunRecord], config: dict[str, Any], workers: int,
          energy_bin: float, volume_bin: float, top: int | None
          ) -> tuple[dict[str, Any], list[Cluster], dict[int, Snapped]]:
    """Symmetry snapping (:func:`rmsearch.analysis.snap.snap_clusters`) when the run's potential
    is at hand; returns (report entry, clusters, representative -> outcome)."""
    try:
        res = snap_clusters(clusters, lambda rid: records[rid].to_atoms(), config, workers=workers,
                            energy_bin=energy_bin, volume_bin=volume_bin, top=top)
    except RMError as exc:
        log.warning("symmetry snapping skipped: %s", exc)
        return {"note": f"skipped: {exc}"}, clusters, {}
    return res.summary(), res.clusters, res.snapped


def _rank(clusters: list[Cluster], elemental: dict[str, float] | None, snapped: dict[int, Snapped] | None = None
          ) -> tuple[list[Cluster], dict[str, Any]]:
    """Build the pseudo hull (binaries, ternaries) and rank clusters by distance above it, else by energy
    (a snapped representative's energy where snapping kept it)."""
    elements = sorted({el.symbol for c in clusters for el in Composition(c.formula).elements})
    info: dict[str, Any] = {"hull": None, "note": "", "e_hull_of": {}, "order": list(clusters), "elements": elements}
    if len(elements) > 3:
        info["note"] = f"not built: {len(elements)} elements (binaries and ternaries only)"
    if not (2 <= len(elements) <= 3 and clusters):
        return clusters, info
    snapped = snapped or {}
    energy = {c.representative: snapped[c.representative].energy_per_atom if c.representative in snapped
              else c.energy_per_atom for c in clusters}
    try:
        hull = pseudo_hull([c.formula for c in clusters], [energy[c.representative] for c in clusters], elemental)
    except RMError as exc:
        info["note"] = str(exc)
        return clusters, info
    info["hull"] = hull
    e_hull_of = {c.representative: (float(hull.e_ex[k]), float(hull.e_hull[k])) for k, c in enumerate(clusters)}
    info["e_hull_of"] = e_hull_of
    ranked = sorted(clusters, key=lambda c: (round(e_hull_of[c.representative][1], 9), energy[c.representative],
                                             c.representative))
    return ranked, info


def _annotations(scores: list[ClusterScore], invalid: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per-run key-value pairs for the database and the extxyz."""
    ann: dict[int, dict[str, Any]] = {}
    for item in invalid:
        ann[item["run_id"]] = {"valid": False, "invalid_reason": item["reason"]}
    for s in scores:
        for rid in s.members:
            ann[rid] = {"valid": True, "cluster_id": s.cluster_id, "representative": rid == s.representative,
                        "hits": s.hits, "spacegroup": s.spacegroup_number, "spacegroup_symbol": s.spacegroup_symbol,
                        "e_hull": s.e_hull}
    return ann


def _write_cifs(top_scores: list[ClusterScore], records: dict[int, RunRecord], report_dir: Path,
                snapped: dict[int, Snapped] | None = None) -> dict[int, str]:
    """CIFs of the top clusters' representatives (and ``..._snapped.cif`` of the snapped
    structure where snapping kept one); returns cluster id -> path relative to the report."""
    adaptor = AseAtomsAdaptor()
    cifs: dict[int, str] = {}
    for stale in (report_dir / "cifs").glob("rank*_run*.cif"):  # from an earlier analysis of this run
        stale.unlink()
    snapped = snapped or {}
    for s in top_scores:
        atoms = records[s.representative].to_atoms()
        if atoms.pbc.all():
            rel = f"cifs/rank{s.cluster_id:03d}_{s.formula}_run{s.representative}.cif"
            with atomic_output(report_dir / rel) as tmp:
                CifWriter(adaptor.get_structure(atoms)).write_file(tmp)
            cifs[s.cluster_id] = rel
            sn = snapped.get(s.representative)
            if sn is not None and sn.atoms is not None:
                with atomic_output(report_dir / rel.replace(".cif", "_snapped.cif")) as tmp:
                    CifWriter(adaptor.get_structure(sn.atoms), symprec=1e-3).write_file(tmp)
    return cifs


def _write_plots(scores: list[ClusterScore], valid_recs: list[RunRecord], hull_data: dict[str, Any],
                 report_dir: Path, top: int) -> dict[str, str]:
    """All PNG plots; returns plot name -> path relative to the report."""
    paths: dict[str, str] = {}
    if hull_data["hull"] is not None:
        sg = {s.representative: s.spacegroup_symbol for s in scores}
        labels = [f"{c.formula} {sg.get(c.representative, '')}".strip() for c in hull_data["order"]]
        plots.plot_hull(hull_data["hull"], labels, report_dir / "plots/hull.png")
        paths["hull"] = "plots/hull.png"
    sg_of_run = {rid: s.spacegroup_number for s in scores for rid in s.members}
    energies = [r.energy_per_atom for r in valid_recs]
    plots.plot_energy_volume(energies, [r.volume_per_atom for r in valid_recs],
                             [sg_of_run.get(r.run_id, 0) for r in valid_recs], report_dir / "plots/energy_volume.png")
    paths["energy_volume"] = "plots/energy_volume.png"
    plots.plot_energy_histogram(energies, report_dir / "plots/energy_histogram.png")
    paths["energy_histogram"] = "plots/energy_histogram.png"
    plots.plot_hits(scores, report_dir / "plots/hits.png", top=max(top, 10))
    paths["hits"] = "plots/hits.png"
    return paths


def _compare(scores: list[ClusterScore], invalid: list[dict[str, Any]], records: dict[int, RunRecord],
             refs: list[tuple[str, Structure]], reference: str, match_top_k: int, metrics: bool,
             workers: int) -> dict[str, Any]:
    """Match rate against the references and, with ``metrics``, the generation metrics."""
    adaptor = AseAtomsAdaptor()
    periodic = [s for s in scores if records[s.representative].to_atoms().pbc.all()]
    cand = [(s.cluster_id, adaptor.get_structure(records[s.representative].to_atoms())) for s in periodic]
    match = match_references(cand, refs, top_k=match_top_k)
    out: dict[str, Any] = {"match": {"reference": reference, "summary": match.summary(), "rows": match.rows}}
    if metrics and cand:
        # generated set: one structure per cluster plus every invalid result
        gen: list[Structure] = [st for _, st in cand]
        gen += [adaptor.get_structure(records[i["run_id"]].to_atoms()) for i in invalid
                if records[i["run_id"]].to_atoms().pbc.all()]
        out["metrics"] = generation_metrics(gen, [st for _, st in refs], workers=workers)
    return out
