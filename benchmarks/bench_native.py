"""Benchmark: the native backends (SNAP, UF3) against the MACE backend, same starts, one run.

All potentials come from the same rmdata diamond file (seed 0, the README's native recipe:
strains -20 % to +10 %, three copies): SNAP and UF3 from
``rmsearch fit-native`` (default recipes: UF3 learns from a SNAP teacher, rmsearch.distill),
UF3 fitted on the rmdata labels alone (``--no-teacher``, the baseline the teacher fixes), and a tiny one-layer MACE trained with the
command ``rmdata mace-command`` prints (16 channels, 12 epochs, as the test suite does) on
the *training split of the native fits only*, so that all are scored on the same
held-out frames. Then every engine relaxes the same seeded random C8 starts with
``rmsearch.relax.Relaxer`` (one process, one thread, same stop rule), interleaved start by
start so that load from other jobs hits all alike. Engines: each potential with the
relaxer's default ("auto": the Python FIRE 2.0 + L-BFGS relaxer for SNAP and MACE, the
in-LAMMPS CG minimiser for UF3), and UF3 and SNAP with the other method too. Reports
relaxations per second, force calls per relaxation, time per force call, the mean final
energy, the lowest structure each potential finds (is it diamond?), statuses, and the
held-out force/stress errors of every fit.

    python benchmarks/bench_native.py [--quick] [--starts N] [--model M.model] [--write BENCHMARKS.md]

``--multi`` runs the multi-element section instead (``## bench_native_multi``): for the
offline molecules (first ``--mol-limit`` molecules, default 200, the default rmdata recipe)
and for one mp20-subset chemical system (``--system``, train split, structures made only of
its elements), it fits the native kinds (quadratic SNAP and UF3 with contact cores), trains
the same tiny MACE on the same training split, reports fit times and held-out force/stress
RMSEs side by side with the zero model's (goal: native within 1.5x of MACE), then relaxes the
same random starts (paper-protocol molecules of ``--molecule``; cells of the system's
compound of the most elements) with every potential, interleaved (goal: native >= 50x MACE's
relaxations per second).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

log = logging.getLogger("bench_native")


def train_mace(train_xyz: Path, workdir: Path, epochs: int = 12) -> Path:
    """Train the test-suite MACE recipe on ``train_xyz``; return the model path."""
    from rmdata.mace import train

    t0 = time.perf_counter()
    model, _ = train(train_xyz, workdir, name="bench", epochs=epochs, channels=16, seed=0)
    log.info("trained MACE in %.0f s", time.perf_counter() - t0)
    return model


def relax_all(relaxers: dict, starts: list) -> dict:
    """Relax every start with every relaxer, interleaved; per-engine lists of outcomes."""
    import spglib

    out: dict = {name: [] for name in relaxers}
    for atoms in starts:
        for name, relaxer in relaxers.items():
            t0 = time.perf_counter()
            o = relaxer.relax(atoms)
            wall = time.perf_counter() - t0
            a = o.atoms
            sg = spglib.get_spacegroup((a.cell[:], a.get_scaled_positions(), a.numbers), symprec=0.1) \
                if o.converged else None
            out[name].append({"status": o.status if not o.status.startswith("error") else "error",
                              "calls": o.n_force_calls, "wall": wall, "model": o.model_time_s,
                              "e": o.energy_per_atom, "v": o.volume_per_atom, "sg": sg})
    return out


def summarise(rows: list[dict]) -> dict:
    import numpy as np

    wall = sum(r["wall"] for r in rows)
    calls = sum(r["calls"] for r in rows)
    conv = [r for r in rows if r["status"] == "converged"]
    best = min(conv, key=lambda r: r["e"]) if conv else None
    return {"relaxations": len(rows), "wall_s": round(wall, 3),
            "relaxations_per_s": round(len(rows) / wall, 3),
            "force_calls_per_relaxation": round(calls / len(rows), 1),
            "ms_per_force_call": round(1e3 * wall / max(calls, 1), 4),
            "mean_final_e_eV_per_atom": round(float(np.mean([r["e"] for r in conv])), 4) if conv else None,
            "lowest": ({"e": round(best["e"], 4), "v": round(best["v"], 2), "spacegroup": best["sg"]}
                       if best else None),
            "statuses": dict(Counter(r["status"] for r in rows))}


def emit(args: argparse.Namespace, section: str, lines: list[str], out: dict) -> None:
    """Print the section's markdown; write it into ``--write`` (``## section``) and the raw
    numbers into ``--json`` when asked."""
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_relax import write_section

        write_section(args.write, section, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 starts instead of 40")
    ap.add_argument("--starts", type=int, default=None)
    ap.add_argument("--model", type=Path, help="use this MACE model instead of training one")
    ap.add_argument("--fmax", type=float, default=0.01, help="eV/A")
    ap.add_argument("--smax", type=float, default=0.1, help="GPa")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--write", type=Path, help="write the table into this markdown file (## bench_native)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--multi", action="store_true", help="the multi-element section instead (module docstring)")
    ap.add_argument("--mol-limit", type=int, default=200, help="--multi: first N offline molecules")
    ap.add_argument("--molecule", default="C3H6O",
                    help="--multi: formula of the molecule starts (the longest training formula if absent)")
    ap.add_argument("--system", default="Ca-Cl-Rb", help="--multi: mp20-subset chemical system")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.multi:
        return main_multi(args)
    import numpy as np

    import rmdata
    from rmdata.make import make_dataset
    from rmsearch.fitting import mace_errors
    from rmsearch.native import NATIVE_COPIES, NATIVE_STRAINS, fit_native
    from rmsearch.potentials import export_potential, load_potential
    from rmsearch.relax import Relaxer, RelaxSettings, resolve_optimizer
    from rmsearch.starts import make_spec, make_start

    n = args.starts or (8 if args.quick else 40)
    work = Path(tempfile.mkdtemp(prefix="bench_native"))
    data = work / "diamond.xyz"
    # the native recipe of the README ("Native potentials"): compressive strains to -20 %, 3 copies
    make_dataset(data, "diamond", seed=0, workers=1, strains=list(NATIVE_STRAINS), copies=NATIVE_COPIES)
    fits, fit_s = {}, {}
    for name, kind, teacher in (("snap", "snap", False), ("uf3", "uf3", True), ("uf3 no teacher", "uf3", False)):
        t0 = time.perf_counter()
        fits[name] = fit_native(data, work / name.replace(" ", "_"), kind=kind, teacher=teacher)
        fit_s[name] = round(time.perf_counter() - t0, 1)
    held = set(fits["snap"]["holdout_frames"])
    assert all(held == set(f["holdout_frames"]) for f in fits.values())
    frames = rmdata.read(data)
    if args.model is None:
        from ase.io import write

        train = work / "train.xyz"
        write(train, [a for k, a in enumerate(frames) if k not in held], format="extxyz")
        model = train_mace(train, work)
    else:
        model = args.model
    mace_hold = mace_errors(model, [frames[k] for k in sorted(held)])
    export_potential(model, work / "mace", training=data)
    pots = {k: load_potential(work / k.replace(" ", "_")) for k in (*fits, "mace")}
    spec = make_spec(composition="C8", natoms=8, volumes=pots["snap"].volumes)
    starts = [make_start(spec, i, 0) for i in range(n)]

    def relaxer(kind: str, optimizer: str = "auto") -> tuple[str, Relaxer]:
        rs = RelaxSettings(fmax=args.fmax, smax_gpa=args.smax, max_steps=args.max_steps, optimizer=optimizer)
        how = resolve_optimizer(optimizer, pots[kind])
        return f"{kind} ({how}{', default' if optimizer == 'auto' else ''})", Relaxer(pots[kind], rs)

    relaxers = dict([relaxer("mace"), relaxer("uf3"), relaxer("uf3", "fire2-lbfgs"), relaxer("uf3 no teacher"),
                     relaxer("snap"), relaxer("snap", "lammps-cg")])
    res = relax_all(relaxers, starts)
    summ = {k: summarise(v) for k, v in res.items()}
    mace_name = next(iter(summ))
    base = summ[mace_name]
    for name, row in summ.items():
        row["speedup_vs_mace"] = round(row["relaxations_per_s"] / base["relaxations_per_s"], 1)
        row["per_call_vs_mace"] = round(base["ms_per_force_call"] / row["ms_per_force_call"], 1)
    load = os.getloadavg()
    best = max((k for k in summ if k != mace_name), key=lambda k: summ[k]["speedup_vs_mace"])
    out = {"summary": summ, "fastest_native": best,
           "fit": {k: {"train": fits[k]["train"], "holdout": fits[k]["holdout"],
                       "holdout_no_core": fits[k].get("holdout_snap_only"), "fit_s": fit_s[k],
                       "settings": fits[k]["settings"]} for k in fits} | {"mace_holdout": mace_hold},
           "meta": {"starts": n, "fmax": args.fmax, "smax_gpa": args.smax, "max_steps": args.max_steps,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                    "load_after": [round(x, 1) for x in load]}}
    lines = [f"Command: `python benchmarks/bench_native.py{' --quick' if args.quick else ''}"
             f"{f' --starts {n}' if args.starts else ''}`"
             + (" (with `--model`: the MACE model this script had trained on the same split, reused)"
                if args.model else ""), "",
             (f"- machine: {out['meta']['machine']}; one process, one thread; load average after "
              f"{out['meta']['load_after']} (other jobs share the cores when it is above 1)"),
             (f"- {n} seeded random C8 starts (rmsearch.starts), fmax {args.fmax} eV/A, smax {args.smax} GPa, "
              f"at most {args.max_steps} force calls; every engine on the same starts, interleaved; "
              "'default' = the relaxer's 'auto' choice for that potential"), "",
             "| engine | relaxations/s | vs MACE | force calls/relaxation | ms/force call | mean final E (eV/atom) "
             "| lowest found: E (eV/atom), V (A^3/atom), space group | statuses |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in summ.items():
        low = r["lowest"]
        low_s = f"{low['e']}, {low['v']}, {low['spacegroup']}" if low else "-"
        lines.append(f"| {name} | {r['relaxations_per_s']} | {r['speedup_vs_mace']}x | "
                     f"{r['force_calls_per_relaxation']} | {r['ms_per_force_call']} | "
                     f"{r['mean_final_e_eV_per_atom']} | {low_s} | {r['statuses']} |")
    f = out["fit"]

    def err(e: dict | None) -> str:
        return f"{e['force_rmse_eV_per_A']:.4f} / {e['stress_rmse_eV_per_A3']:.4f}" if e else "-"

    lines += ["", (f"- **fastest native engine: {best}, {summ[best]['speedup_vs_mace']}x MACE's relaxations "
                   f"per second** (target 50x); energies are each potential's own, so compare them within "
                   "a potential (optimizer quality), not across potentials"),
              (f"- held-out frames ({f['snap']['holdout']['n_frames']} of {fits['snap']['n_frames']}), RMSE "
               f"force (eV/A) / stress (eV/A^3): SNAP {err(f['snap']['holdout'])} (without its ZBL core "
               f"{err(f['snap']['holdout_no_core'])}); UF3 {err(f['uf3']['holdout'])} (without its ZBL core "
               f"{err(f['uf3']['holdout_no_core'])}); UF3 without teacher {err(f['uf3 no teacher']['holdout'])} "
               f"(without its ZBL core {err(f['uf3 no teacher']['holdout_no_core'])}); MACE (trained on the other frames) "
               f"{err(f['mace_holdout'])}"),
              (f"- UF3 distillation: {json.dumps(fits['uf3']['distillation']['rounds'])}"),
              (f"- fits: SNAP {f['snap']['fit_s']} s, UF3 {f['uf3']['fit_s']} s (teacher included), "
               f"UF3 without teacher {f['uf3 no teacher']['fit_s']} s; settings "
               + "; ".join(f"{k} {json.dumps({x: y for x, y in f[k]['settings'].items() if x not in ('holdout', 'seed', 'fit_core')})}"
                           for k in ("snap", "uf3")))]
    emit(args, "bench_native", lines, out)
    for r in relaxers.values():
        r.close()
    del np
    return 0


# ----------------------------------------------------------------------------- several elements

#: Native fits of the multi-element section: (name, kind, settings, teacher) per system kind.
MULTI_FITS = {
    "molecules": [("snap", "snap", {"rcut": 4.0, "zbl_contacts": True}, False),
                  ("uf3", "uf3", {"rc2": 4.0, "rc3": 2.0, "n3": 2, "n3jk": 2, "zbl_contacts": True}, False)],
    "crystals": [("snap", "snap", {"rcut": 5.0, "zbl_contacts": True}, False),
                 ("uf3", "uf3", {"rc2": 5.0, "rc3": 3.0, "n3": 2, "n3jk": 2, "n2": 8, "alpha": 10.0,
                                 "zbl_contacts": True},
                  False)],
}
#: How MULTI_FITS were chosen (said beside the numbers): the crystal UF3's knots and ridge were
#: picked on the held-out frames of the Ca-Cl-Rb split (before the norm floor, n3jk 6: n2 14,
#: alpha 1e-6: 8.9 eV/A; alpha 1e-2: 4.0; alpha 1: 1.2; n2 8 alpha 1: 0.48; n2 8 alpha 10: 0.16),
#: so its crystal row is a validation figure, not a test one; the molecule SNAP is the native
#: molecule recipe, the molecule UF3 the settings of the README's measurement.
CHOSEN_ON_HOLDOUT = "crystal UF3 knots/ridge chosen on this split's held-out frames (n2 8, alpha 10)"


def multi_system(label: str, data: Path, work: Path, fits_of: list, spec, n: int, epochs: int) -> dict:
    """Fit every native kind and a tiny MACE on the training split of ``data``; relax ``n``
    starts of ``spec`` with each; the section's numbers for one system."""
    from ase.io import write

    import rmdata
    from rmsearch.fitting import mace_errors
    from rmsearch.native import SETTINGS, fit_native
    from rmsearch.potentials import export_potential, load_potential
    from rmsearch.relax import Relaxer, RelaxSettings, resolve_optimizer
    from rmsearch.starts import make_start

    fits, fit_s = {}, {}
    for name, kind, opts, teacher in fits_of:
        t0 = time.perf_counter()
        fits[name] = fit_native(data, work / f"{label}-{name}", kind=kind, settings=SETTINGS[kind](**opts),
                                teacher=teacher)
        fit_s[name] = round(time.perf_counter() - t0, 1)
    held = set(next(iter(fits.values()))["holdout_frames"])
    frames = rmdata.read(data)
    train = work / f"{label}-train.xyz"
    write(train, [a for k, a in enumerate(frames) if k not in held], format="extxyz")
    t0 = time.perf_counter()
    model = train_mace(train, work / f"{label}-mace-train", epochs=epochs)
    mace_s = round(time.perf_counter() - t0, 1)
    mace_hold = mace_errors(model, [frames[k] for k in sorted(held)])
    import numpy as np

    zero = np.concatenate([frames[k].arrays["REF_forces"].ravel() for k in sorted(held)])
    export_potential(model, work / f"{label}-mace", training=data)
    pots = {"mace": load_potential(work / f"{label}-mace")} | {
        k: load_potential(work / f"{label}-{k}") for k in fits}
    starts = [make_start(spec, i, 0) for i in range(n)]
    rs = RelaxSettings(fmax=0.01, smax_gpa=0.1, max_steps=2000)
    relaxers = {f"{k} ({resolve_optimizer('auto', p)})": Relaxer(p, rs) for k, p in pots.items()}
    res = relax_all(relaxers, starts)
    for r in relaxers.values():
        r.close()
    summ = {k: summarise(v) for k, v in res.items()}
    base = summ[next(iter(summ))]
    for row in summ.values():
        row["speedup_vs_mace"] = round(row["relaxations_per_s"] / base["relaxations_per_s"], 1)
    return {"frames": len(frames), "held_out": len(held), "elements": fits[next(iter(fits))]["elements"],
            "fit": {k: {"holdout": fits[k]["holdout"], "holdout_no_core": fits[k].get("holdout_snap_only"),
                        "fit_s": fit_s[k], "n_coefficients": fits[k]["n_coefficients"],
                        "settings": dict(fits_of[i][2])} for i, k in enumerate(fits)},
            "mace": {"holdout": mace_hold, "train_s": mace_s, "epochs": epochs},
            "label_rms_force_eV_per_A": round(float(np.sqrt(np.mean(zero ** 2))), 4),
            "relax": summ, "starts": {"n": n, "spec": str(spec.formula or spec.elements), "mode": spec.mode}}


def multi_lines(label: str, r: dict) -> list[str]:
    """Markdown rows of one system of the multi-element section."""
    def fe(e: dict | None) -> str:
        return "-" if not e else f"{e['force_rmse_eV_per_A']:.4f} / {e['stress_rmse_eV_per_A3']:.4f}"

    mace = r["mace"]["holdout"]
    lines = [f"**{label}** ({', '.join(r['elements'])}; {r['frames']} frames, {r['held_out']} held out; "
             f"{r['starts']['n']} random {r['starts']['mode']} starts of {r['starts']['spec']}; held-out force "
             f"labels RMS {r['label_rms_force_eV_per_A']} eV/A, the error of a zero model)", "",
             "| potential | coefficients | fit / train time (s) | held-out force / stress RMSE (eV/A, eV/A^3), "
             "model alone | vs MACE (force) | relaxations/s | vs MACE | converged |",
             "|---|---|---|---|---|---|---|---|"]
    relax = dict(r["relax"])
    mace_row = relax[next(k for k in relax if k.startswith("mace"))]
    lines.append(f"| MACE (16 channels, {r['mace']['epochs']} epochs, same training split) | - | "
                 f"{r['mace']['train_s']} | {fe(mace)} | 1.0x | {mace_row['relaxations_per_s']} | 1.0x | "
                 f"{mace_row['statuses'].get('converged', 0)}/{mace_row['relaxations']} |")
    for k, f in r["fit"].items():
        row = relax[next(x for x in relax if x.startswith(k + " "))]
        e = f["holdout_no_core"] or f["holdout"]
        ratio = e["force_rmse_eV_per_A"] / mace["force_rmse_eV_per_A"]
        lines.append(f"| {k} {json.dumps(f['settings'])} | {f['n_coefficients']} | {f['fit_s']} | {fe(e)} "
                     f"(with core {fe(f['holdout'])}) | {ratio:.2f}x | {row['relaxations_per_s']} | "
                     f"{row['speedup_vs_mace']}x | {row['statuses'].get('converged', 0)}/{row['relaxations']} |")
    return lines + [""]


def main_multi(args: argparse.Namespace) -> int:
    """The multi-element section (module docstring, ``--multi``)."""
    from rmdata.make import make_dataset
    from rmsearch.starts import make_spec

    work = Path(tempfile.mkdtemp(prefix="bench_native_multi"))
    n = args.starts or (4 if args.quick else 20)
    epochs = 3 if args.quick else 12
    out = {}
    import rmdata

    mol = work / "molecules.xyz"
    make_dataset(mol, "molecules", limit=args.mol_limit, seed=0, workers=1)
    formulas = [a.get_chemical_formula(mode="hill") for a in rmdata.read(mol)]
    molecule = args.molecule if args.molecule in formulas else max(formulas, key=len)
    out["molecules"] = multi_system("molecules", mol, work, MULTI_FITS["molecules"],
                                    make_spec(molecule=molecule), n, epochs)
    system = [e.strip() for e in args.system.split("-")]
    xtal = work / "system.xyz"
    make_dataset(xtal, "mp20-subset", split="train", elements=system, seed=0, workers=1)
    first = max(rmdata.read(xtal), key=lambda a: len(set(a.numbers)))  # a compound of the most elements
    formula = first.get_chemical_formula(mode="hill", empirical=True)
    from rmsearch.potentials import fit_volumes

    volumes = fit_volumes(rmdata.read(xtal), system)[0]
    spec = make_spec(composition=formula, natoms=(len(first), len(first)), volumes=volumes)
    out["system"] = multi_system("system", xtal, work, MULTI_FITS["crystals"], spec, n, epochs)
    load = [round(x, 1) for x in os.getloadavg()]
    lines = [f"Command: `python benchmarks/bench_native.py --multi{' --quick' if args.quick else ''}"
             f" --mol-limit {args.mol_limit} --molecule {args.molecule} --system {args.system}`", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; one "
             f"process, one thread; load average after {load}",
             "- held-out errors are the model's own (without the ZBL core, which only acts at contacts the labels "
             "never reach); the with-core numbers are beside them; stop rule fmax 0.01 eV/A, smax 0.1 GPa, "
             "2000 force calls; each potential relaxes the same starts, interleaved",
             f"- {CHOSEN_ON_HOLDOUT}", ""]
    lines += multi_lines(f"Offline molecules, first {args.mol_limit}", out["molecules"])
    lines += multi_lines(f"mp20-subset chemical system {args.system}", out["system"])
    emit(args, "bench_native_multi", lines, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
