"""Molecules: train on small organic molecules, generate held-out compositions from random atoms.

Response Matching paper, molecule example (DESIGN §5): a short-ranged MLIP trained on
response-matched QM7b molecules turns random atoms into valid molecules. Here the
training set is the offline ``molecules`` list (RDKit ETKDG + MMFF94 geometries; QM7b is
added with ``--qm7b`` where it has been downloaded) minus every molecule of the held-out
compositions, so each molecule generated for them is a genuine prediction.

Steps (each skipped when its output exists):

1. training references: ``rmdata.molecules.load_molecules`` minus the held-out
   compositions, written to ``data/references.xyz``
2. ``rmdata make --input data/references.xyz --preset molecule``
3. ``mace_run_train ...`` as printed by ``rmdata mace-command``
4. ``rmsearch export``
5. per held-out composition F: ``rmsearch launch --molecule F`` (random atoms in a
   10x5x5 A box, minimum distance 0.7 A, FIRE to fmax 0.001 eV/A)
6. kick stage (``rmsearch launch`` has no kick option, so it is done here through the
   library: :class:`rmsearch.relax.Relaxer`): every finished structure is displaced by
   uniform noise in +-0.75 A per Cartesian component (``rng([seed, run_id])``) and
   relaxed again to fmax 0.0002 eV/A; the results form a second run directory
   (same record format), which ``rmsearch analyze`` reports on
7. validity: RDKit bond perception from 3D (``rdDetermineBonds.DetermineBonds``,
   charge 0) + sanitisation; PoseBusters "mol" checks where posebusters is installed;
   the share of valid molecules whose canonical SMILES (no stereo) is a known isomer of
   the composition in the molecules list (a held-out molecule, so never seen in training)

Usage::

    python workflows/molecules.py --out mol_run                 # default size
    python workflows/molecules.py --out q --quick               # test size
    python workflows/molecules.py --out m --holdout C3H6O,C4H6  # choose compositions
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Pipeline, add_run_options, read_report, write_page

log = logging.getLogger("workflows.molecules")

#: Held-out compositions (several isomers each in the molecules list).
HOLDOUT = ("C3H6O", "C4H6", "C4H8", "C5H8", "C3H7NO", "C6H7N")
#: Sizes: (training molecules (None = all), epochs, MACE channels, held-out compositions, starts each).
SIZES = {"full": (None, 30, 32, 6, 32), "quick": (120, 8, 16, 2, 32)}
#: DESIGN §5 protocol: FIRE fmax (eV/A) before and after the kick, kick amplitude (A).
FMAX_1, FMAX_2, KICK = 0.001, 0.0002, 0.75
PAPER = {"valid_percent": 92.7, "stable_percent": 85.6}


# ----------------------------------------------------------------------------- validity

@dataclass
class MoleculeCheck:
    """Chemical validity of one 3D structure.

    valid: bonds perceived at charge 0 and the molecule sanitises. smiles: canonical SMILES
    without stereo (None if invalid). known: ``smiles`` is among the known isomers given.
    reason: why it is invalid ("" if valid).
    """

    valid: bool
    smiles: str | None
    known: bool
    reason: str = ""


def canonical_smiles(smiles: str) -> str:
    """Canonical SMILES without stereochemistry (the isomer identity used for matching)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"unparsable SMILES {smiles!r}")
    return Chem.MolToSmiles(mol, isomericSmiles=False)


def rdkit_mol_from_atoms(atoms):
    """RDKit molecule with bonds perceived from the 3D coordinates (charge 0), sanitised.

    Raises ``ValueError`` with the RDKit reason when bond orders cannot be assigned or the
    molecule does not sanitise (valence, charges, radicals).
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    lines = [str(len(atoms)), ""] + [f"{s} {x:.6f} {y:.6f} {z:.6f}"
                                     for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)]
    mol = Chem.MolFromXYZBlock("\n".join(lines) + "\n")
    if mol is None:
        raise ValueError("RDKit could not read the coordinates")
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
    except Exception as exc:  # noqa: BLE001 - RDKit raises ValueError or RuntimeError
        raise ValueError(f"bond perception: {' '.join(str(exc).split())[:120]}") from None
    problem = Chem.SanitizeMol(mol, catchErrors=True)
    if problem != Chem.SanitizeFlags.SANITIZE_NONE:
        raise ValueError(f"sanitisation failed ({problem})")
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        raise ValueError("radical electrons")
    if len(Chem.GetMolFrags(mol)) != 1:
        raise ValueError(f"{len(Chem.GetMolFrags(mol))} fragments")
    return mol


def check_molecule(atoms, known_smiles: set[str] | frozenset[str] = frozenset()) -> MoleculeCheck:
    """Validity of one structure and whether it is one of ``known_smiles`` (canonical, no stereo)."""
    from rdkit import Chem

    try:
        mol = rdkit_mol_from_atoms(atoms)
    except ValueError as exc:
        return MoleculeCheck(False, None, False, str(exc))
    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
    return MoleculeCheck(True, smiles, smiles in known_smiles)


def posebusters_checks(atoms_list: list) -> list[dict[str, bool]] | None:
    """PoseBusters "mol" checks per structure (None when posebusters is not installed).

    Structures whose bonds cannot be perceived get an empty dict (they fail every check).
    """
    try:
        from posebusters import PoseBusters
    except ImportError:
        return None
    buster = PoseBusters(config="mol")
    out: list[dict[str, bool]] = []
    for atoms in atoms_list:
        try:
            mol = rdkit_mol_from_atoms(atoms)
        except ValueError:
            out.append({})
            continue
        frame = buster.bust([mol], None, None, full_report=False)
        out.append({str(k): bool(v) for k, v in frame.iloc[0].items()})
    return out


def known_isomers(formulas: list[str] | None = None) -> dict[str, set[str]]:
    """Canonical SMILES (no stereo) of the molecules-list entries, grouped by Hill formula.

    ``formulas`` restricts the result to those compositions (None = all).
    """
    from rmdata.molecules import molecule_compositions, read_smiles_list

    smiles = read_smiles_list()
    groups = molecule_compositions()
    wanted = groups if formulas is None else {f: groups.get(f, []) for f in formulas}
    return {f: {canonical_smiles(smiles[int(sid.split("-")[1])]) for sid in ids} for f, ids in wanted.items()}


# ----------------------------------------------------------------------------- steps

def write_references(path: Path, holdout: list[str], limit: int | None, seed: int,
                     qm7b: bool = False, smiles_path: str | Path | None = None) -> dict[str, Any]:
    """Training references: the molecules list (and QM7b if asked) minus ``holdout`` formulas.

    ``limit`` keeps the first ``limit`` kept molecules (None = all); ``smiles_path`` is
    another SMILES list (None = the shipped one). Returns counts.
    """
    from ase.io import write

    from rmdata.molecules import load_molecules, load_qm7b
    from rmdata.utils import atomic_output

    mols = load_molecules(seed=seed, path=smiles_path)
    if qm7b:
        mols += load_qm7b()
    held = set(holdout)
    kept = [m for m in mols if m.get_chemical_formula(mode="hill") not in held]
    dropped = len(mols) - len(kept)
    kept = kept[:limit] if limit else kept
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        write(tmp, kept, format="extxyz")
    return {"molecules": len(mols), "held_out": dropped, "training": len(kept)}


_RELAXER = None  # the Relaxer of a kick worker process (set by _kick_worker_init)


def _kick_worker_init(potdir: str, relax: dict[str, Any]) -> None:
    """Pool initializer: one Relaxer (LAMMPS + model, one thread) per worker process."""
    global _RELAXER
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer
    from rmsearch.runner import relax_settings_from_dict

    _RELAXER = Relaxer(load_potential(potdir), relax_settings_from_dict(relax))


def _kick_one(task: tuple[str, int, float]) -> str:
    """Kick and relax one record (JSON in, JSON out) with the worker's Relaxer."""
    from rmsearch.records import RunRecord
    from rmsearch.runner import record_from_outcome

    line, seed, kick = task
    rec = RunRecord.from_json(line)
    atoms = rec.to_atoms()
    rng = np.random.default_rng([seed, rec.run_id, 1])
    atoms.positions += rng.uniform(-kick, kick, size=atoms.positions.shape)
    atoms.info.update(start_kind="kick", start_status="ok", spacegroup_start=None)
    t0 = time.perf_counter()
    outcome = _RELAXER.relax(atoms)
    return record_from_outcome(outcome, atoms, rec.run_id, seed, time.perf_counter() - t0).to_json()


def kick_and_relax(stage1: Path, stage2: Path, potdir: Path, kick: float = KICK, fmax: float = FMAX_2,
                   max_steps: int = 4000, workers: int = 1) -> int:
    """Kick every finished structure of run directory ``stage1`` and relax it again.

    Each structure with status ``converged`` or ``not_converged`` gets uniform noise in
    +-``kick`` A per Cartesian component from ``rng([seed, run_id, 1])`` and is relaxed to
    ``fmax`` (eV/A) with the search's relax settings otherwise, by ``workers`` processes
    (one thread each); records go to ``stage2/shards/kick.jsonl`` as they finish (a run
    directory ``rmsearch analyze`` reads). Run ids already there are skipped, so an
    interrupted stage resumes. Returns the number of structures relaxed now.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from rmsearch.records import RunRecord, read_records
    from rmsearch.runner import (
        ShardWriter,
        init_rundir,
        read_config,
        relax_settings_from_dict,
        relax_settings_to_dict,
    )

    config = read_config(stage1)
    # normalised as init_rundir compares them (fields added by later versions take defaults)
    relax = relax_settings_to_dict(relax_settings_from_dict({**config["relax"], "fmax": fmax,
                                                             "max_steps": max_steps}))
    config2 = {**config, "relax": relax, "kick": {"from": str(stage1), "amplitude_A": kick,
                                                  "rng": "default_rng([seed, run_id, 1])"}}
    init_rundir(stage2, config2)
    done = {r.run_id for r in read_records(stage2 / "shards")}
    todo = [r for r in sorted(read_records(stage1 / "shards"), key=lambda r: r.run_id)
            if r.status in ("converged", "not_converged") and r.run_id not in done]
    if not todo:
        return 0
    tasks = [(r.to_json(), int(config["seed"]), kick) for r in todo]
    writer = ShardWriter(stage2 / "shards" / "kick.jsonl")
    if workers <= 1 or len(tasks) == 1:  # in this process: no start-up cost of a pool
        _kick_worker_init(str(potdir), relax)
        try:
            for task in tasks:
                writer.append(RunRecord.from_json(_kick_one(task)))
        finally:
            writer.close()
            _RELAXER.close()
        return len(todo)
    try:
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(tasks))),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_kick_worker_init, initargs=(str(potdir), relax)) as pool:
            futures = [pool.submit(_kick_one, task) for task in tasks]
            for future in as_completed(futures):  # written as they finish: resumable
                writer.append(RunRecord.from_json(future.result()))
    finally:
        writer.close()
    return len(todo)


def evaluate(rundir: Path, formula: str, isomers: set[str], posebusters: bool = True,
             nstarts: int | None = None) -> dict[str, Any]:
    """Validity, known-isomer and PoseBusters figures of the finished molecules in ``rundir``.

    Every start counts in the denominator (a failed relaxation is not a valid molecule):
    ``nstarts`` random starts (default: the records of ``rundir``; give the first stage's
    count for the kick stage, which only holds the runs that finished the first stage).
    """
    from rmsearch.records import read_records

    records = sorted(read_records(rundir / "shards"), key=lambda r: r.run_id)
    finished = [r for r in records if r.status in ("converged", "not_converged")]
    checks = [check_molecule(r.to_atoms(), isomers) for r in finished]
    pb = posebusters_checks([r.to_atoms() for r in finished]) if posebusters else None
    rows = []
    for k, (r, c) in enumerate(zip(finished, checks)):
        row = {"run_id": r.run_id, "status": r.status, "fmax": r.fmax, "energy_per_atom": r.energy_per_atom,
               "valid": c.valid, "smiles": c.smiles, "known_isomer": c.known, "reason": c.reason}
        if pb is not None:
            row["posebusters_pass"] = bool(pb[k]) and all(pb[k].values())
            row["posebusters_failed"] = sorted(key for key, ok in pb[k].items() if not ok) if pb[k] else ["bonds"]
        rows.append(row)
    n = nstarts if nstarts is not None else len(records)
    valid = [row for row in rows if row["valid"]]
    smiles_counts: dict[str, int] = {}
    for row in valid:
        smiles_counts[row["smiles"]] = smiles_counts.get(row["smiles"], 0) + 1
    out = {
        "formula": formula, "runs": n, "finished": len(finished),
        "converged": sum(r.status == "converged" for r in records),
        "valid": len(valid), "valid_percent": 100.0 * len(valid) / n if n else 0.0,
        "known_isomer": sum(row["known_isomer"] for row in valid),
        "known_isomer_percent": 100.0 * sum(row["known_isomer"] for row in valid) / n if n else 0.0,
        "known_isomers_listed": sorted(isomers),
        "known_isomers_found": sorted({row["smiles"] for row in valid if row["known_isomer"]}),
        "distinct_valid_smiles": dict(sorted(smiles_counts.items(), key=lambda kv: -kv[1])),
        "rows": rows,
    }
    if pb is not None:
        passed = sum(row["posebusters_pass"] for row in rows)
        out.update(posebusters=passed, posebusters_percent=100.0 * passed / n if n else 0.0)
    return out


def plot_validity(results: list[dict[str, Any]], path: Path) -> None:
    """Bar chart: valid / PoseBusters / known-isomer share per held-out composition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["formula"] for r in results]
    series = [("valid (RDKit)", "valid_percent"), ("PoseBusters", "posebusters_percent"),
              ("known isomer", "known_isomer_percent")]
    series = [s for s in series if all(s[1] in r for r in results)]
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.4 * len(labels) + 2), 4.5))
    for k, (name, key) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [r[key] for r in results], width, label=name)
    ax.axhline(PAPER["valid_percent"], color="k", ls="--", lw=1, label="paper: valid 92.7%")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 120)
    ax.set_ylabel("% of random starts")
    ax.set_title("Molecules from random atoms, held-out compositions")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, summary: dict[str, Any], results: list[dict[str, Any]], figure: str) -> Path:
    """``report.html``: summary, per-composition table, generated SMILES, links to analysis reports."""
    rows = "".join(
        f"<tr><td>{html.escape(r['formula'])}</td><td>{r['runs']}</td><td>{r['converged']}</td>"
        f"<td>{r['valid_percent']:.1f}</td><td>{r.get('posebusters_percent', float('nan')):.1f}</td>"
        f"<td>{r['known_isomer_percent']:.1f}</td><td>{html.escape(', '.join(r['known_isomers_found']))}</td>"
        f"<td>{html.escape(', '.join(f'{s} x{n}' for s, n in list(r['distinct_valid_smiles'].items())[:8]))}</td>"
        f"<td><a href='runs/{html.escape(r['formula'])}_kick/report/index.html'>analysis</a></td></tr>"
        for r in results)
    body = f"""<h2>Held-out compositions</h2><table><tr><th>formula</th><th>runs</th><th>converged</th>
<th>valid %</th><th>PoseBusters %</th><th>known isomer %</th><th>isomers found</th>
<th>generated (SMILES x count)</th><th>report</th></tr>{rows}</table>"""
    return write_page(out, "Molecules from random atoms", summary, figure, body, skip=("steps", "per_composition"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="molecules_run", help="output folder")
    ap.add_argument("--quick", action="store_true", help="test size (fewer molecules, epochs, compositions)")
    ap.add_argument("--holdout", help="held-out compositions, comma-separated Hill formulas "
                                      f"(default: the first N of {','.join(HOLDOUT)})")
    ap.add_argument("--ncomp", type=int, help="number of default held-out compositions (default: by size)")
    ap.add_argument("--nstarts", type=int, help="random starts per composition (default 32)")
    ap.add_argument("--limit", type=int, help="training molecules (default: by size; 0 = all)")
    ap.add_argument("--epochs", type=int, help="MACE epochs (default: by size)")
    ap.add_argument("--channels", type=int, help="MACE channels (default: by size)")
    ap.add_argument("--qm7b", action="store_true", help="add QM7b to the training set (needs the download)")
    ap.add_argument("--max-steps", type=int, default=3000, help="force calls per relaxation stage")
    ap.add_argument("--no-posebusters", action="store_true", help="skip PoseBusters even if installed")
    add_run_options(ap, search=False)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    limit, epochs, channels, ncomp, nstarts = SIZES["quick" if args.quick else "full"]
    if args.limit is not None:
        limit = args.limit or None
    epochs, channels = args.epochs or epochs, args.channels or channels
    nstarts = args.nstarts or nstarts
    holdout = ([f.strip() for f in args.holdout.split(",") if f.strip()] if args.holdout
               else list(HOLDOUT[:args.ncomp or ncomp]))
    isomers = known_isomers(holdout)
    missing = [f for f in holdout if not isomers[f]]
    if missing:
        raise SystemExit(f"error: --holdout {','.join(missing)}: no molecule of that composition in the "
                         "molecules list, so nothing is held out and no isomer can be matched")

    p = Pipeline(args.out, force=args.force)
    refs = p.out / "data" / "references.xyz"
    counts_path = p.out / "data" / "references.json"
    if not refs.exists() or args.force:
        t0 = time.perf_counter()
        counts = write_references(refs, holdout, limit, args.seed, args.qm7b)
        counts_path.write_text(json.dumps(counts) + "\n")
        p.steps.append({"step": "references", "command": "rmdata.molecules.load_molecules minus held-out",
                        "wall_s": round(time.perf_counter() - t0, 1)})
    counts = json.loads(counts_path.read_text())
    data = p.out / "data" / "molecules.xyz"
    p.run("data", ["rmdata", "make", "--input", str(refs), "--preset", "molecule", "--seed", str(args.seed),
                   "-o", str(data), "-j", "1"], done=data)
    model = p.train(data, "molecules", epochs, channels, args.seed)
    potdir = p.out / "potential"
    p.run("export", ["rmsearch", "export", str(model), "--training", str(data), "--out", str(potdir)],
          done=potdir / "potential.json")

    results = []
    for formula in holdout:
        run1 = p.out / "runs" / formula
        run2 = p.out / "runs" / f"{formula}_kick"
        launch = ["rmsearch", "launch", "--potential", str(potdir), "--molecule", formula,
                  "--nruns", str(nstarts), "--fmax", str(FMAX_1), "--max-steps", str(args.max_steps),
                  "--seed", str(args.seed), "-o", str(run1), "--no-progress"]
        if args.workers:
            launch += ["--workers", str(args.workers)]
        p.run(f"search {formula}", launch)
        t0 = time.perf_counter()
        n = kick_and_relax(run1, run2, potdir, max_steps=args.max_steps, workers=args.workers or os.cpu_count() or 1)
        p.steps.append({"step": f"kick {formula}", "command": f"kick +-{KICK} A, FIRE fmax {FMAX_2} (Relaxer)",
                        "relaxed": n, "wall_s": round(time.perf_counter() - t0, 1)})
        p.run(f"analyze {formula}", ["rmsearch", "analyze", str(run2)])
        res = evaluate(run2, formula, isomers[formula], posebusters=not args.no_posebusters, nstarts=nstarts)
        res["before_kick"] = {k: v for k, v in evaluate(run1, formula, isomers[formula], posebusters=False).items()
                              if k in ("valid_percent", "known_isomer_percent", "converged")}
        res["analysis_clusters"] = read_report(run2)["n_clusters"]
        results.append(res)
        print(f"[{formula}] valid {res['valid']}/{res['runs']}, known isomer {res['known_isomer']}", flush=True)

    total = sum(r["runs"] for r in results)
    summary: dict[str, Any] = {
        "held_out": holdout,
        "valid_percent": round(100.0 * sum(r["valid"] for r in results) / total, 1),
        "known_isomer_percent": round(100.0 * sum(r["known_isomer"] for r in results) / total, 1),
        "paper": PAPER,
        "runs": total,
        "converged_percent": round(100.0 * sum(r["converged"] for r in results) / total, 1),
        "training": {**counts, "epochs": epochs, "channels": channels, "preset": "molecule", "seed": args.seed,
                     "qm7b": args.qm7b},
        "protocol": {"box_A": [10, 5, 5], "min_distance_A": 0.7, "fmax_1": FMAX_1, "kick_A": KICK,
                     "fmax_2": FMAX_2, "starts_per_composition": nstarts, "max_steps": args.max_steps},
    }
    if all("posebusters_percent" in r for r in results):
        summary["posebusters_percent"] = round(100.0 * sum(r["posebusters"] for r in results) / total, 1)
    plot_validity(results, p.out / "molecules_validity.png")
    p.finish({**summary, "per_composition": results})
    path = write_report(p.out, summary, results, "molecules_validity.png")
    print(json.dumps(summary, indent=2))
    print(f"report: {path}")
    return summary


if __name__ == "__main__":
    main()
