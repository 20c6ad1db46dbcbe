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
from rmsearch.analysis.collect import FINAL_XYZ, load_run, write_final_structures, write_results_db
from rmsearch.analysis.dedupe import DEFAULT_ENERGY_BIN, DEFAULT_VOLUME_BIN, dedupe
from rmsearch.analysis.hull import pseudo_hull
from rmsearch.analysis.match import match_references
from rmsearch.analysis.metrics import generation_metrics
from rmsearch.analysis.references import load_references
from rmsearch.analysis.score import score_clusters
from rmsearch.analysis.validity import DEFAULT_FRAC, DEFAULT_MAX_VOLUME_FACTOR, check_validity

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
            metrics: bool = True, elemental: dict[str, float] | None = None) -> dict[str, Any]:
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

    Returns:
        The report data (also written to ``report/report.json``).
    """
    if top < 1:
        raise RMError(f"--top {top}: must be at least 1")
    t0 = time.perf_counter()
    run = load_run(rundir)
    records = {r.run_id: r for r in run.records}
    report_dir = run.rundir / "report"

    # validity first: invalid structures are counted and listed, never ranked
    valid_items, invalid = [], []
    for rec in run.usable:
        atoms = rec.to_atoms()
        check = check_validity(atoms, frac=frac, max_volume_factor=max_volume_factor)
        if check.valid:
            valid_items.append((rec.run_id, atoms, rec.energy_per_atom))
        else:
            invalid.append({"run_id": rec.run_id, "formula": rec.formula, "reason": check.reason})

    result = dedupe(valid_items, energy_bin=energy_bin, volume_bin=volume_bin, workers=workers)
    clusters = result.clusters

    # pseudo hull over the cluster representatives of binary and ternary searches
    elements = sorted({el.symbol for c in clusters for el in Composition(c.formula).elements})
    hull, hull_note, e_hull_of = None, "", {}
    hull_order = list(clusters)  # the order of the hull's entries
    if 2 <= len(elements) <= 3 and clusters:
        try:
            hull = pseudo_hull([c.formula for c in clusters], [c.energy_per_atom for c in clusters], elemental)
            e_hull_of = {c.representative: (float(hull.e_ex[k]), float(hull.e_hull[k])) for k, c in enumerate(clusters)}
        except RMError as exc:
            hull_note = str(exc)
    elif len(elements) > 3:
        hull_note = f"not built: {len(elements)} elements (binaries and ternaries only)"
    if hull is not None:
        clusters = sorted(clusters, key=lambda c: (round(e_hull_of[c.representative][1], 9), c.energy_per_atom,
                                                   c.representative))
    scores = score_clusters(clusters, records)
    for s in scores:
        if s.representative in e_hull_of:
            s.e_ex, s.e_hull = e_hull_of[s.representative]

    # per-run annotations for the database and the extxyz
    ann: dict[int, dict[str, Any]] = {}
    for item in invalid:
        ann[item["run_id"]] = {"valid": False, "invalid_reason": item["reason"]}
    for s in scores:
        for rid in s.members:
            ann[rid] = {"valid": True, "cluster_id": s.cluster_id, "representative": rid == s.representative,
                        "hits": s.hits, "spacegroup": s.spacegroup_number, "spacegroup_symbol": s.spacegroup_symbol,
                        "e_hull": s.e_hull}
    write_results_db(run, ann)
    write_final_structures(run.usable, run.rundir / FINAL_XYZ, ann)

    # CIFs of the top clusters
    adaptor = AseAtomsAdaptor()
    top_scores = scores[:top]
    cifs: dict[int, str] = {}
    for stale in (report_dir / "cifs").glob("rank*_run*.cif"):  # from an earlier analysis of this run
        stale.unlink()
    for s in top_scores:
        rel = f"cifs/rank{s.cluster_id:03d}_{s.formula}_run{s.representative}.cif"
        atoms = records[s.representative].to_atoms()
        if atoms.pbc.all():
            with atomic_output(report_dir / rel) as tmp:
                CifWriter(adaptor.get_structure(atoms)).write_file(tmp)
            cifs[s.cluster_id] = rel

    # plots
    plot_paths: dict[str, str] = {}
    (report_dir / "plots").mkdir(parents=True, exist_ok=True)
    if hull is not None:
        plots.plot_hull(hull, _hull_labels(hull_order, scores), report_dir / "plots/hull.png")
        plot_paths["hull"] = "plots/hull.png"
    sg_of_run = {rid: s.spacegroup_number for s in scores for rid in s.members}
    valid_recs = [records[rid] for rid, _, _ in valid_items]
    plots.plot_energy_volume([r.energy_per_atom for r in valid_recs], [r.volume_per_atom for r in valid_recs],
                             [sg_of_run.get(r.run_id, 0) for r in valid_recs], report_dir / "plots/energy_volume.png")
    plot_paths["energy_volume"] = "plots/energy_volume.png"
    plots.plot_energy_histogram([r.energy_per_atom for r in valid_recs], report_dir / "plots/energy_histogram.png")
    plot_paths["energy_histogram"] = "plots/energy_histogram.png"
    plots.plot_hits(scores, report_dir / "plots/hits.png", top=max(top, 10))
    plot_paths["hits"] = "plots/hits.png"

    data: dict[str, Any] = {
        "title": run.rundir.resolve().name, "rundir": str(run.rundir), "n_records": len(run.records),
        "status_counts": run.status_counts, "n_usable": len(run.usable), "n_invalid": len(invalid),
        "invalid": invalid, "problems": run.problems,
        "validity": {"frac": frac, "max_volume_factor": max_volume_factor},
        "dedupe": {"n_structures": result.n_structures, "n_clusters": len(clusters),
                   "n_matcher_calls": result.n_matcher_calls, "n_quick_matches": result.n_quick_matches,
                   "n_all_pairs": result.n_all_pairs,
                   "n_pairs_same_composition": result.n_pairs_same_composition, "wall_s": result.wall_s,
                   "settings": result.settings},
        "hull_note": hull_note, "elements": elements,
        "hull_vertices": [{"formula": scores[k].formula, "e_ex": scores[k].e_ex, "cluster_id": scores[k].cluster_id}
                          for k in range(len(scores)) if hull is not None and scores[k].e_hull is not None
                          and abs(scores[k].e_hull) < 1e-9],
        "top_clusters": [dict(s.to_dict(), cif=cifs.get(s.cluster_id, "")) for s in top_scores],
        "n_clusters": len(scores), "plots": plot_paths,
        "provenance": provenance(run.config, run.config.get("seed")),
    }

    if reference is not None:
        refs = load_references(reference)
        cand = [(s.cluster_id, adaptor.get_structure(records[s.representative].to_atoms())) for s in scores
                if records[s.representative].to_atoms().pbc.all()]
        match = match_references(cand, refs, top_k=match_top_k)
        data["match"] = {"reference": str(reference), "summary": match.summary(), "rows": match.rows}
        if metrics and cand:
            gen: list[Structure] = [st for _, st in cand]
            gen += [adaptor.get_structure(records[i["run_id"]].to_atoms()) for i in invalid
                    if records[i["run_id"]].to_atoms().pbc.all()]
            data["metrics"] = generation_metrics(gen, [st for _, st in refs], workers=workers)
    data["wall_s"] = time.perf_counter() - t0
    data = _jsonable(data)
    from rmsearch.analysis.report import write_report

    write_report(data, report_dir)
    log.info("report written to %s (%.1f s)", report_dir / "index.html", data["wall_s"])
    return data


def _hull_labels(clusters, scores) -> list[str]:
    """Labels of hull points in the order the hull was built (``clusters`` before ranking)."""
    sg = {s.representative: s.spacegroup_symbol for s in scores}
    return [f"{c.formula} {sg.get(c.representative, '')}".strip() for c in clusters]
