"""Write the analysis report: ``report/index.html``, ``report/report.md``, ``report/report.json``.

The report is built from one JSON-serialisable dict (see :func:`rmsearch.analysis.analyze.analyze`),
so the HTML, the Markdown and the JSON always say the same. Plots are PNG files and the top
clusters' CIFs sit beside it in ``report/plots/`` and ``report/cifs/``, linked relatively, so
the folder can be copied or served as it is.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from rmdata.utils import atomic_output, write_json_atomic

PLOT_TITLES = {
    "hull": "Pseudo convex hull",
    "energy_volume": "Energy vs volume per atom, coloured by space group",
    "energy_histogram": "Energy histogram",
    "hits": "Cluster hit counts",
    "molecules": "Molecules: valid, PoseBusters, charged and known isomers (% of all starts)",
}

MOLECULE_COLUMNS = ("formula", "starts", "finished", "valid", "valid %", "PoseBusters %", "charged",
                    "isomers", "known", "new", "most frequent (SMILES x hits)", "invalid: why")

TABLE_COLUMNS = ("rank", "formula", "natoms", "E (eV/atom)", "dE (meV/atom)", "E_hull (meV/atom)", "P (GPa)",
                 "V (A^3/atom)", "SG 1e-3", "SG 1e-2", "SG 1e-1", "snapped SG 1e-3", "hits", "run", "CIF")


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def top_table_rows(data: dict[str, Any]) -> list[list[str]]:
    """Rows of the top-N table as strings, in :data:`TABLE_COLUMNS` order (CIF = relative path)."""
    clusters = data["top_clusters"]
    if not clusters:
        return []
    e0 = min(c["energy_per_atom"] for c in clusters)
    rows = []
    for c in clusters:
        sg = c["spacegroups"]
        rows.append([str(c["cluster_id"]), c["formula"], str(c["natoms"]), _fmt(c["energy_per_atom"], 4),
                     _fmt((c["energy_per_atom"] - e0) * 1000, 1),
                     _fmt(c["e_hull"] * 1000 if c.get("e_hull") is not None else None, 1),
                     _fmt(c["pressure_gpa"], 2), _fmt(c["volume_per_atom"], 2),
                     *[f"{sg[k][1]} ({sg[k][0]})" for k in ("0.001", "0.01", "0.1")], _snapped_sg(c),
                     str(c["hits"]), str(c["representative"]), c.get("cif", "")])
    return rows


def _snapped_sg(c: dict[str, Any]) -> str:
    """Space group at 1e-3 A after symmetry snapping ("-": not snapped), e.g. "Fd-3m (227)"."""
    snap = c.get("snap")
    if not snap or snap.get("status") != "kept":
        return "-" if not snap else f"({snap.get('status')})"
    sg = snap["spacegroups"]["0.001"]
    return f"{sg[1]} ({sg[0]})"


def molecule_rows(data: dict[str, Any]) -> list[list[str]]:
    """Rows of the molecule table (per composition, then all), in :data:`MOLECULE_COLUMNS` order."""
    mol = data.get("molecules")
    if not mol:
        return []
    items = list(mol["compositions"].items())
    if len(items) > 1:
        items.append(("all", mol["total"]))
    return [[f, str(c["starts"]), str(c["finished"]), str(c["valid"]), _fmt(c["valid_percent"], 1),
             _fmt(c.get("posebusters_percent"), 1), str(c["charged"]), str(c["distinct_isomers"]),
             str(c["known"]), str(c["new"]),
             ", ".join(f"{s} x{n}" for s, n in list(c["isomers"].items())[:6]) or "-",
             ", ".join(f"{k} {n}" for k, n in c["reasons"].items()) or "-"] for f, c in items]


def csp_text(s: dict[str, Any]) -> str:
    """One paragraph: match rates at k = 1 and k = 20 and the mean normalised RMSE of the matches."""
    parts = [f"k = {k}: {s[f'n_matched_k{k}']} of {s['n_references']} references matched (match rate "
             f"{_fmt(s[f'match_rate_k{k}'])}, mean RMSE {_fmt(s[f'mean_rmse_k{k}'], 4)})" for k in s["ks"]]
    return ("; ".join(parts) + ". k = 1: the lowest-energy valid result of the reference's composition; "
            "k = 20: the best of its 20 lowest (StructureMatcher stol 0.5, ltol 0.3, angle_tol 10; RMSE "
            "normalised by (V/N)^(1/3)).")


MOLECULE_NOTE = ("Valid = RDKit bonds at charge 0, sanitised, one fragment, no radicals, no formal charges; "
                 "charged = bonds only with formal charges (zwitterions), not counted valid. Percentages are "
                 "of all starts. Known = isomer in the known-SMILES list (default: the offline training set).")


def _summary_items(data: dict[str, Any]) -> list[tuple[str, str]]:
    d = data["dedupe"]
    items = [("run directory", data["rundir"]), ("records", str(data["n_records"])),
             ("runs per status", ", ".join(f"{k}: {v}" for k, v in data["status_counts"].items()) or "none"),
             ("converged with finite energy", str(data["n_usable"])),
             ("invalid (not ranked)", f"{data['n_invalid']} (atoms closer than {data['validity']['frac']} x covalent "
                                      f"radii sum, or volume above {data['validity']['max_volume_factor']} x "
                                      "covalent-sphere volume)"),
             ("valid, deduplicated", f"{d['n_structures']} structures -> {d['n_clusters']} clusters"),
             ("StructureMatcher calls", f"{d['n_matcher_calls']} plus {d['n_quick_matches']} obvious duplicates "
                                        f"(all pairs: {d['n_all_pairs']}, same composition: "
                                        f"{d['n_pairs_same_composition']})"),
             ("problems while reading", str(len(data["problems"])))]
    if data.get("snap"):
        sn = data["snap"]
        items.insert(-1, ("symmetry snapping", sn.get("note") or (
            f"{sn['n_clusters_before']} -> {sn['n_clusters_after']} clusters; representatives symmetrised at "
            f"{sn['symprec_A']} A and re-relaxed: " + ", ".join(f"{k} {v}" for k, v in sn["status_counts"].items())
            + f" ({sn['wall_s']:.1f} s)")))
    if data.get("hull_note"):
        items.append(("pseudo hull", data["hull_note"]))
    return items


def write_markdown(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Markdown version of the report."""
    out = [f"# rmsearch report: {data['title']}", ""]
    out += [f"- **{k}**: {v}" for k, v in _summary_items(data)]
    out += ["", f"## Top {len(data['top_clusters'])} clusters", "",
            "Ranked by distance above the pseudo hull when one was built, else by energy per atom. "
            "dE is relative to the best shown; SG = spglib space group at symprec 1e-3, 1e-2, 1e-1 A.", ""]
    rows = top_table_rows(data)
    out += ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        out.append("| " + " | ".join(r[:-1] + [f"[cif]({r[-1]})" if r[-1] else "-"]) + " |")
    out += ["", "## Plots", ""]
    for key, rel in data["plots"].items():
        out += [f"### {PLOT_TITLES.get(key, key)}", "", f"![{key}]({rel})", ""]
    if data.get("hull_vertices"):
        out += ["## Pseudo hull vertices", "", "| formula | E_ex (eV/atom) | cluster |", "|---|---|---|"]
        out += [f"| {v['formula']} | {_fmt(v['e_ex'], 4)} | {v['cluster_id']} |" for v in data["hull_vertices"]]
        out.append("")
    if data.get("match"):
        m = data["match"]["summary"]
        out += ["## Match against references", "",
                f"{m['n_matched']} of {m['n_references']} reference structures matched by one of the top "
                f"{m['top_k']} clusters of their composition (match rate {_fmt(m['match_rate'])}, "
                f"mean RMSD {_fmt(m['mean_rmsd'], 4)}); {m['n_searched']} references have a composition "
                f"that was searched (match rate among them {_fmt(m['match_rate_searched'])}).", ""]
    if data.get("molecules"):
        out += ["## Molecules", "", MOLECULE_NOTE, "", "| " + " | ".join(MOLECULE_COLUMNS) + " |",
                "|" + "---|" * len(MOLECULE_COLUMNS)]
        out += ["| " + " | ".join(r) + " |" for r in molecule_rows(data)]
        out.append("")
    if data.get("csp"):
        out += ["## Crystal structure prediction (DiffCSP protocol)", "", csp_text(data["csp"]["summary"]), ""]
    if data.get("metrics"):
        out += ["## Generation metrics", "", "| metric | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v, 4)} |" for k, v in data["metrics"].items()]
        out.append("")
    if data["invalid"]:
        out += [f"## Invalid structures ({data['n_invalid']}, not ranked)", ""]
        out += [f"- run {i['run_id']} {i['formula']}: {i['reason']}" for i in data["invalid"][:50]]
        out.append("")
    if data["problems"]:
        out += [f"## Problems ({len(data['problems'])} records or lines skipped)", ""]
        out += [f"- {p}" for p in data["problems"]]
        out.append("")
    out += ["## Deduplication settings", "", "```json", json.dumps(data["dedupe"]["settings"], indent=1), "```", ""]
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(out))
    return path


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}th{background:#eee}"
        "img{max-width:100%;border:1px solid #ddd}.problems li{color:#a00}pre{background:#f6f6f6;padding:8px}")


def write_html(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Self-contained HTML report (plots and CIFs linked relatively)."""
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>rmsearch report: {e(data['title'])}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>rmsearch report: {e(data['title'])}</h1>", "<ul id='summary'>"]
    parts += [f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in _summary_items(data)]
    parts += ["</ul>", f"<h2>Top {len(data['top_clusters'])} clusters</h2>",
              "<p>Ranked by distance above the pseudo hull when one was built, else by energy per atom. "
              "dE is relative to the best shown; SG = spglib space group at symprec 1e-3, 1e-2, 1e-1 &Aring;.</p>",
              "<table id='top'><tr>" + "".join(f"<th>{e(c)}</th>" for c in TABLE_COLUMNS) + "</tr>"]
    for r in top_table_rows(data):
        cif = f"<a class='cif' href='{e(r[-1])}'>cif</a>" if r[-1] else "-"
        parts.append("<tr>" + "".join(f"<td>{e(x)}</td>" for x in r[:-1]) + f"<td>{cif}</td></tr>")
    parts += ["</table>", "<h2>Plots</h2>"]
    for key, rel in data["plots"].items():
        parts += [f"<h3>{e(PLOT_TITLES.get(key, key))}</h3>",
                  f"<img class='plot' id='plot-{e(key)}' src='{e(rel)}' alt='{e(PLOT_TITLES.get(key, key))}'>"]
    if data.get("hull_vertices"):
        parts += ["<h2>Pseudo hull vertices</h2>", "<table><tr><th>formula</th><th>E_ex (eV/atom)</th><th>cluster</th></tr>"]
        parts += [f"<tr><td>{e(v['formula'])}</td><td>{_fmt(v['e_ex'], 4)}</td><td>{v['cluster_id']}</td></tr>"
                  for v in data["hull_vertices"]]
        parts.append("</table>")
    if data.get("match"):
        m = data["match"]["summary"]
        parts += ["<h2>Match against references</h2>",
                  f"<p id='match'>{m['n_matched']} of {m['n_references']} reference structures matched by one of the "
                  f"top {m['top_k']} clusters of their composition (match rate {_fmt(m['match_rate'])}, mean RMSD "
                  f"{_fmt(m['mean_rmsd'], 4)}); {m['n_searched']} references have a composition that was searched "
                  f"(match rate among them {_fmt(m['match_rate_searched'])}).</p>"]
    if data.get("molecules"):
        parts += ["<h2>Molecules</h2>", f"<p>{e(MOLECULE_NOTE)}</p>",
                  "<table id='molecules'><tr>" + "".join(f"<th>{e(c)}</th>" for c in MOLECULE_COLUMNS) + "</tr>"]
        parts += ["<tr>" + "".join(f"<td>{e(x)}</td>" for x in r) + "</tr>" for r in molecule_rows(data)]
        parts.append("</table>")
    if data.get("csp"):
        parts += ["<h2>Crystal structure prediction (DiffCSP protocol)</h2>",
                  f"<p id='csp'>{e(csp_text(data['csp']['summary']))}</p>"]
    if data.get("metrics"):
        parts += ["<h2>Generation metrics</h2>", "<table id='metrics'><tr><th>metric</th><th>value</th></tr>"]
        parts += [f"<tr><td>{e(k)}</td><td>{e(_fmt(v, 4))}</td></tr>" for k, v in data["metrics"].items()]
        parts.append("</table>")
    if data["invalid"]:
        parts += [f"<h2>Invalid structures ({data['n_invalid']}, not ranked)</h2>", "<ul id='invalid'>"]
        parts += [f"<li>run {i['run_id']} {e(i['formula'])}: {e(i['reason'])}</li>" for i in data["invalid"][:50]]
        parts.append("</ul>")
    if data["problems"]:
        parts += [f"<h2>Problems ({len(data['problems'])} records or lines skipped)</h2>", "<ul class='problems'>"]
        parts += [f"<li>{e(p)}</li>" for p in data["problems"]]
        parts.append("</ul>")
    parts += ["<h2>Deduplication settings</h2>", f"<pre>{e(json.dumps(data['dedupe']['settings'], indent=1))}</pre>",
              "<p>Data: <a href='report.json'>report.json</a>, <a href='report.md'>report.md</a></p>",
              "</body></html>"]
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path


def write_report(data: dict[str, Any], report_dir: str | os.PathLike) -> Path:
    """Write index.html, report.md and report.json into ``report_dir``; return index.html's path."""
    report_dir = Path(report_dir)
    write_json_atomic(report_dir / "report.json", data)
    write_markdown(data, report_dir / "report.md")
    return write_html(data, report_dir / "index.html")
