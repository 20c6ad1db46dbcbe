"""``rmsearch analyze`` and ``rmsearch collect``: turn a run directory into results and a report."""

from __future__ import annotations

import importlib
from typing import Any

import click

from rmdata.cliutils import CONTEXT, WORKERS, FiniteFloat


class _Default:
    """A click default read from a constant of the analysis modules (their one home), on
    first use: importing :mod:`rmsearch.analysis` takes over a second, which no other
    command should pay. ``--help`` shows the value."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def __str__(self) -> str:
        return str(self())


@click.command("analyze", context_settings=CONTEXT)
@click.argument("rundir", type=click.Path(file_okay=False, path_type=str))
@click.option("--reference", metavar="FILE_OR_DATASET", default=None,
              help="Reference structures to match against and compute generation metrics with: "
                   "a file (extxyz, CIF, MP-20 style CSV) or NAME:SPLIT of the rmdata registry such as mp20-subset:val.")
@click.option("--top", type=click.IntRange(min=1), default=20, help="Clusters in the report table (CIFs written).")
@click.option("--workers", type=WORKERS, default=None,
              help="Processes for dedupe and fingerprints [default: cores available].")
@click.option("--frac", type=FiniteFloat(0, 2, True, True),
              default=_Default("rmsearch.analysis.validity", "DEFAULT_FRAC"),
              help="Invalid if two atoms are closer than FRAC x sum of covalent radii, FRAC in (0, 2).")
@click.option("--energy-bin", type=FiniteFloat(1e-6, 10),
              default=_Default("rmsearch.analysis.dedupe", "DEFAULT_ENERGY_BIN"),
              help="Dedupe energy bin (eV/atom), in [1e-6, 10].")
@click.option("--volume-bin", type=FiniteFloat(1e-6, 10),
              default=_Default("rmsearch.analysis.dedupe", "DEFAULT_VOLUME_BIN"),
              help="Dedupe volume bin in ln(V/atom) (0.05 = 5 %), in [1e-6, 10].")
@click.option("--match-top-k", type=click.IntRange(min=1), default=20,
              help="Clusters per composition tried against each reference structure.")
@click.option("--metrics/--no-metrics", default=True,
              help="Generation metrics (CrystalNN/Magpie COV, FD) against --reference; CrystalNN costs "
                   "~0.1-0.5 s per structure.")
@click.option("--known-smiles", type=click.Path(dir_okay=False), default=None,
              help="Molecule searches: SMILES list (one a line) whose isomers count as known, e.g. the "
                   "training molecules [default: rmdata's offline molecule set].")
@click.option("--posebusters/--no-posebusters", default=True,
              help="Molecule searches: run the PoseBusters 'mol' checks (if posebusters is installed).")
@click.option("--snap/--no-snap", default=False,
              help="Symmetry snapping: symmetrise each cluster representative at spglib symprec 0.1 A, re-relax "
                   "it with the run's potential, keep it when the energy does not rise, merge clusters that "
                   "snap to the same structure.")
@click.option("--snap-top", type=click.IntRange(min=1),
              default=_Default("rmsearch.analysis.snap", "DEFAULT_SNAP_TOP"),
              help="Clusters snapped per composition, the lowest in energy.")
@click.option("--fp-radius", type=FiniteFloat(0, 100), default=None,
              help="Fingerprint distance below which a pair goes to StructureMatcher [default: "
                   "rmsearch.analysis.fingerprint.FP_RADIUS]; 0 = every pair in neighbouring energy/volume "
                   "bins (the plain rule, slow); in [0, 100].")
def analyze_cmd(rundir: str, reference: str | None, top: int, workers: int, frac: float, energy_bin: float,
                volume_bin: float, match_top_k: int, metrics: bool, known_smiles: str | None,
                posebusters: bool, snap: bool, snap_top: int, fp_radius: float | None) -> None:
    """Collect, validate, deduplicate, score and report RUNDIR (writes RUNDIR/report/index.html).

    Molecule searches (launch --molecule) are also scored chemically: RDKit validity of
    neutral molecules (charged structures apart), PoseBusters, isomers known and new.
    """
    from rmsearch.analysis import analyze
    from rmsearch.analysis.fingerprint import FP_RADIUS
    from rmsearch.pool import default_workers

    workers = workers or default_workers()
    radius = FP_RADIUS if fp_radius is None else (fp_radius or None)
    data = analyze(rundir, reference=reference, top=top, workers=workers, frac=frac, energy_bin=energy_bin,
                   volume_bin=volume_bin, match_top_k=match_top_k, metrics=metrics,
                   known_smiles=known_smiles, posebusters=posebusters, snap=snap, fp_radius=radius,
                   snap_top=snap_top)
    d = data["dedupe"]
    click.echo(f"{data['n_records']} runs ({', '.join(f'{k} {v}' for k, v in data['status_counts'].items())}); "
               f"{data['n_invalid']} invalid; {d['n_structures']} valid -> {d['n_clusters']} clusters "
               f"({d['n_matcher_calls']} matcher calls, {d['n_quick_matches']} quick duplicate matches)")
    if data.get("snap") and "n_clusters_after" in data["snap"]:
        sn = data["snap"]
        click.echo(f"symmetry snapping: {sn['n_clusters_before']} -> {sn['n_clusters_after']} clusters "
                   f"({', '.join(f'{k} {v}' for k, v in sn['status_counts'].items())})")
    elif data.get("snap"):
        click.echo(f"symmetry snapping {data['snap']['note']}", err=True)
    if data["problems"]:
        click.echo(f"{len(data['problems'])} shard lines/records skipped: see the report", err=True)
    if data.get("match"):
        m = data["match"]["summary"]
        click.echo(f"match rate {m['n_matched']}/{m['n_references']}")
    if data.get("csp"):
        c = data["csp"]["summary"]
        click.echo("CSP: " + ", ".join(f"k={k} {c[f'n_matched_k{k}']}/{c['n_references']}" for k in c["ks"]))
    if data.get("molecules"):
        t = data["molecules"]["total"]
        pb = f", PoseBusters {t['posebusters']}" if "posebusters" in t else ""
        click.echo(f"molecules: {t['valid']}/{t['starts']} valid ({t['valid_percent']} %){pb}, charged "
                   f"{t['charged']}, {t['distinct_isomers']} isomers ({t['known']} known, {t['new']} new)")
    click.echo(f"report: {rundir.rstrip('/')}/report/index.html")


@click.command("collect", context_settings=CONTEXT)
@click.argument("rundir", type=click.Path(file_okay=False, path_type=str))
def collect_cmd(rundir: str) -> None:
    """Merge RUNDIR's shards into RUNDIR/results.db (ase db) and final_structures.extxyz."""
    from rmsearch.analysis import collect

    run = collect(rundir)
    click.echo(f"{len(run.records)} runs ({len(run.usable)} converged) -> {rundir.rstrip('/')}/results.db")
    for msg in run.problems:
        click.echo(f"skipped: {msg}", err=True)
