"""Match search results against reference structures (the DiffCSP match-rate metric).

For every reference structure, the top-k clusters of the same reduced formula (in rank
order) are compared with pymatgen's StructureMatcher (``stol=0.5, ltol=0.3,
angle_tol=10``, as DiffCSP and the dedupe step). The reference counts as matched if any
of them fits; its RMSD is the smallest ``get_rms_dist`` over the matches (normalised by
``(V/N)^(1/3)``, dimensionless). Match rate = matched / references; the mean RMSD is over
matched references.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ase import Atoms
from pymatgen.core import Structure

from rmsearch.analysis.dedupe import make_matcher


@dataclass
class MatchResult:
    """Per reference: id, formula, whether matched, best RMSD, cluster id of the best match."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    top_k: int = 20

    @property
    def n_references(self) -> int:
        return len(self.rows)

    @property
    def n_matched(self) -> int:
        return sum(r["matched"] for r in self.rows)

    @property
    def match_rate(self) -> float:
        return self.n_matched / self.n_references if self.rows else math.nan

    @property
    def mean_rmsd(self) -> float:
        rms = [r["rmsd"] for r in self.rows if r["matched"]]
        return sum(rms) / len(rms) if rms else math.nan

    @property
    def n_searched(self) -> int:
        """References whose composition has at least one cluster (was searched)."""
        return sum(r["n_candidates"] > 0 for r in self.rows)

    def summary(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "n_references": self.n_references, "n_matched": self.n_matched,
                "match_rate": self.match_rate, "mean_rmsd": self.mean_rmsd, "n_searched": self.n_searched,
                "match_rate_searched": self.n_matched / self.n_searched if self.n_searched else math.nan}


def same_structure(a: Atoms | Structure, b: Atoms | Structure) -> bool:
    """Whether two crystals are the same structure by the matcher of dedupe and matching
    (:func:`rmsearch.analysis.dedupe.make_matcher`: stol 0.5, ltol 0.3, angle_tol 10 degrees,
    primitive cells, volumes scaled, so a different lattice constant still matches), fitted
    both ways. ASE ``Atoms`` or pymatgen ``Structure``."""
    from pymatgen.io.ase import AseAtomsAdaptor

    a, b = (AseAtomsAdaptor.get_structure(x) if isinstance(x, Atoms) else x for x in (a, b))
    return bool(make_matcher().fit(a, b, symmetric=True))


def match_references(candidates: Sequence[tuple[int, Structure]], references: Sequence[tuple[str, Structure]],
                     *, top_k: int = 20) -> MatchResult:
    """Match ``references`` (id, Structure) against ranked ``candidates`` (cluster id, Structure).

    ``candidates`` must be in rank order (best first); per formula the first ``top_k`` are tried.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    matcher = make_matcher()
    by_formula: dict[str, list[tuple[int, Structure]]] = {}
    for cid, struct in candidates:
        by_formula.setdefault(struct.composition.reduced_formula, []).append((cid, struct))
    result = MatchResult(top_k=top_k)
    for ref_id, ref in references:
        formula = ref.composition.reduced_formula
        tried = by_formula.get(formula, [])[:top_k]
        best: tuple[float, int] | None = None
        for cid, struct in tried:
            rms = matcher.get_rms_dist(ref, struct)
            if rms is not None and (best is None or rms[0] < best[0]):
                best = (float(rms[0]), cid)
        result.rows.append({"reference": ref_id, "formula": formula, "n_candidates": len(tried),
                            "matched": best is not None, "rmsd": best[0] if best else None,
                            "cluster_id": best[1] if best else None})
    return result


#: Ranks of the DiffCSP protocol: the lowest-energy valid result (k = 1), the best of the 20 lowest.
CSP_KS = (1, 20)


def csp_match(results: Sequence[tuple[int, Structure, float]], references: Sequence[tuple[str, Structure]],
              *, ks: Sequence[int] = CSP_KS) -> dict[str, Any]:
    """Crystal structure prediction scored by the DiffCSP protocol, for a search.

    ``results``: every valid result as (run id, Structure, energy per atom in eV); per
    reference, those of its reduced formula are ranked by energy, and the reference counts
    as matched at k when one of the k lowest fits it (StructureMatcher of
    :func:`make_matcher`: stol 0.5, ltol 0.3, angle_tol 10). Its RMSE is the smallest
    ``get_rms_dist`` among those matches, normalised by (V/N)^(1/3) as pymatgen does.
    Returns per-reference rows and, per k, the match rate and the mean RMSE of the matched.
    """
    matcher = make_matcher()
    kmax = max(ks)
    by_formula: dict[str, list[tuple[float, int, Structure]]] = {}
    for rid, struct, epa in results:
        by_formula.setdefault(struct.composition.reduced_formula, []).append((float(epa), rid, struct))
    for group in by_formula.values():
        group.sort(key=lambda t: (t[0], t[1]))
    rows = []
    for ref_id, ref in references:
        ranked = by_formula.get(ref.composition.reduced_formula, [])[:kmax]
        rms = []
        for _, rid, struct in ranked:
            fit = matcher.get_rms_dist(ref, struct)
            rms.append(None if fit is None else float(fit[0]))
        row: dict[str, Any] = {"reference": ref_id, "formula": ref.composition.reduced_formula,
                               "n_results": len(by_formula.get(ref.composition.reduced_formula, []))}
        for k in ks:
            hits = [(r, ranked[i][1]) for i, r in enumerate(rms[:k]) if r is not None]
            best = min(hits) if hits else None
            row[f"matched_k{k}"] = best is not None
            row[f"rmse_k{k}"] = best[0] if best else None
            row[f"run_k{k}"] = best[1] if best else None
        rows.append(row)
    summary: dict[str, Any] = {"n_references": len(rows), "ks": list(ks)}
    for k in ks:
        matched = [r for r in rows if r[f"matched_k{k}"]]
        summary[f"match_rate_k{k}"] = len(matched) / len(rows) if rows else math.nan
        summary[f"n_matched_k{k}"] = len(matched)
        summary[f"mean_rmse_k{k}"] = (sum(r[f"rmse_k{k}"] for r in matched) / len(matched)) if matched else math.nan
    return {"summary": summary, "rows": rows}
