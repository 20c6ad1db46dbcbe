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
from collections import namedtuple
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


# --------------------------------------------------------------------------- the document
# The report is built once as a list of blocks (what is said), then rendered as Markdown or as
# HTML (how it is written), so the two formats cannot drift apart.


#: Report blocks (named tuples, so ``match`` can take them apart). ``id``/``cls``: HTML id and
#: class; a ``Link`` is a table cell linking ``href`` (relative to the report); an ``Items``
#: entry ``(key, value)`` shows the key in bold; ``Image.key`` names a plot (HTML id ``plot-<key>``).
Link = namedtuple("Link", "text href cls", defaults=("",))
Heading = namedtuple("Heading", "level text")
Paragraph = namedtuple("Paragraph", "text id", defaults=("",))
Items = namedtuple("Items", "items id cls", defaults=("", ""))
Table = namedtuple("Table", "columns rows id", defaults=("",))
Image = namedtuple("Image", "key src alt")
Code = namedtuple("Code", "text language", defaults=("",))
Block = Heading | Paragraph | Items | Table | Image | Code

TOP_NOTE = ("Ranked by distance above the pseudo hull when one was built, else by energy per atom. "
            "dE is relative to the best shown; SG = spglib space group at symprec 1e-3, 1e-2, 1e-1 A.")


def report_blocks(data: dict[str, Any]) -> list[Block]:
    """The report as a format-free list of blocks (rendered by :func:`write_markdown` and
    :func:`write_html`); sections without data are left out."""
    blocks: list[Block] = [Heading(1, f"rmsearch report: {data['title']}"), Items(_summary_items(data), id="summary"),
                           Heading(2, f"Top {len(data['top_clusters'])} clusters"), Paragraph(TOP_NOTE),
                           Table(TABLE_COLUMNS, [r[:-1] + [Link("cif", r[-1], "cif") if r[-1] else "-"]
                                                 for r in top_table_rows(data)], id="top"),
                           Heading(2, "Plots")]
    for key, rel in data["plots"].items():
        title = PLOT_TITLES.get(key, key)
        blocks += [Heading(3, title), Image(key, rel, title)]
    if data.get("hull_vertices"):
        blocks += [Heading(2, "Pseudo hull vertices"),
                   Table(("formula", "E_ex (eV/atom)", "cluster"),
                         [[v["formula"], _fmt(v["e_ex"], 4), str(v["cluster_id"])] for v in data["hull_vertices"]])]
    if data.get("match"):
        m = data["match"]["summary"]
        blocks += [Heading(2, "Match against references"), Paragraph(
            f"{m['n_matched']} of {m['n_references']} reference structures matched by one of the top "
            f"{m['top_k']} clusters of their composition (match rate {_fmt(m['match_rate'])}, "
            f"mean RMSD {_fmt(m['mean_rmsd'], 4)}); {m['n_searched']} references have a composition "
            f"that was searched (match rate among them {_fmt(m['match_rate_searched'])}).", id="match")]
    if data.get("molecules"):
        blocks += [Heading(2, "Molecules"), Paragraph(MOLECULE_NOTE),
                   Table(MOLECULE_COLUMNS, molecule_rows(data), id="molecules")]
    if data.get("csp"):
        blocks += [Heading(2, "Crystal structure prediction (DiffCSP protocol)"),
                   Paragraph(csp_text(data["csp"]["summary"]), id="csp")]
    if data.get("metrics"):
        blocks += [Heading(2, "Generation metrics"),
                   Table(("metric", "value"), [[k, _fmt(v, 4)] for k, v in data["metrics"].items()], id="metrics")]
    if data["invalid"]:
        blocks += [Heading(2, f"Invalid structures ({data['n_invalid']}, not ranked)"),
                   Items([f"run {i['run_id']} {i['formula']}: {i['reason']}" for i in data["invalid"][:50]],
                         id="invalid")]
    if data["problems"]:
        blocks += [Heading(2, f"Problems ({len(data['problems'])} records or lines skipped)"),
                   Items(list(data["problems"]), cls="problems")]
    blocks += [Heading(2, "Deduplication settings"), Code(json.dumps(data["dedupe"]["settings"], indent=1), "json")]
    return blocks


def _markdown_cell(cell: str | Link) -> str:
    return f"[{cell.text}]({cell.href})" if isinstance(cell, Link) else cell


def markdown_lines(block: Block) -> list[str]:
    """One block as Markdown lines, a blank line after it."""
    match block:
        case Heading(level, text):
            lines = [f"{'#' * level} {text}"]
        case Paragraph(text):
            lines = [text]
        case Items(items):
            lines = [f"- **{it[0]}**: {it[1]}" if isinstance(it, tuple) else f"- {it}" for it in items]
        case Table(columns, rows):
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
        case Image(key, src):
            lines = [f"![{key}]({src})"]
        case Code(text, language):
            lines = [f"```{language}", text, "```"]
        case _:
            raise TypeError(f"unknown report block {block!r}")
    return [*lines, ""]


def _attrs(id: str = "", cls: str = "") -> str:  # noqa: A002 - the HTML attribute's name
    e = html.escape
    return (f" class='{e(cls)}'" if cls else "") + (f" id='{e(id)}'" if id else "")


def _html_cell(cell: str | Link) -> str:
    if isinstance(cell, Link):
        return f"<a{_attrs(cls=cell.cls)} href='{html.escape(cell.href)}'>{html.escape(cell.text)}</a>"
    return html.escape(cell)


def html_lines(block: Block) -> list[str]:
    """One block as HTML lines (text escaped)."""
    e = html.escape
    match block:
        case Heading(level, text):
            return [f"<h{level}>{e(text)}</h{level}>"]
        case Paragraph(text, id):
            return [f"<p{_attrs(id)}>{e(text)}</p>"]
        case Items(items, id, cls):
            return [f"<ul{_attrs(id, cls)}>",
                    *(f"<li><b>{e(it[0])}</b>: {e(it[1])}</li>" if isinstance(it, tuple) else f"<li>{e(it)}</li>"
                      for it in items), "</ul>"]
        case Table(columns, rows, id):
            return [f"<table{_attrs(id)}><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>",
                    *("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in rows),
                    "</table>"]
        case Image(key, src, alt):
            return [f"<img{_attrs('plot-' + key, 'plot')} src='{e(src)}' alt='{e(alt)}'>"]
        case Code(text):
            return [f"<pre>{e(text)}</pre>"]
    raise TypeError(f"unknown report block {block!r}")


def write_markdown(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Markdown version of the report."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(line for block in report_blocks(data) for line in markdown_lines(block)))
    return path


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}th{background:#eee}"
        "img{max-width:100%;border:1px solid #ddd}.problems li{color:#a00}pre{background:#f6f6f6;padding:8px}")


def write_html(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Self-contained HTML report (plots and CIFs linked relatively)."""
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             f"<title>rmsearch report: {html.escape(data['title'])}</title>", f"<style>{_CSS}</style></head><body>"]
    parts += [line for block in report_blocks(data) for line in html_lines(block)]
    parts += ["<p>Data: <a href='report.json'>report.json</a>, <a href='report.md'>report.md</a></p>",
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
