"""``rmsearch fit-native``: fit a LAMMPS-native potential (SNAP or UF3) on an rmdata file."""

from __future__ import annotations

import math
from pathlib import Path

import click

from rmdata.cliutils import CONTEXT, SEED, FiniteFloat, check_output, output_option
from rmdata.errors import RMError


def _zbl(text: str) -> tuple[float, float]:
    if text.lower() == "none":
        return 0.0, 0.0
    try:
        inner, outer = (float(x) for x in text.split(","))
    except ValueError:
        raise RMError(f"--zbl {text!r}: give INNER,OUTER in A (e.g. 0.8,1.2) or 'none'") from None
    if not (math.isfinite(inner) and math.isfinite(outer) and 0 < inner < outer <= 10):
        raise RMError(f"--zbl {text!r}: give finite radii 0 < INNER < OUTER <= 10 A (e.g. 0.8,1.2) or 'none'")
    return inner, outer


def _natoms(text: str) -> None:
    """Check ``--distil-natoms`` (N or MIN-MAX) before any fitting starts."""
    from rmsearch.starts import MAX_NATOMS, parse_range

    lo, hi = parse_range(text, "--distil-natoms")
    if not (lo == int(lo) and hi == int(hi) and 1 <= lo <= hi <= MAX_NATOMS):
        raise RMError(f"--distil-natoms {text}: give N or MIN-MAX with 1 <= MIN <= MAX <= {MAX_NATOMS}, e.g. 2-8")


@click.command("fit-native", context_settings=CONTEXT)
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["uf3", "snap"]), default="uf3", show_default=True,
              help="Native MLIP to fit: UF3, two- plus three-body B-splines (~20-40x cheaper per force "
                   "call than SNAP), taught by a SNAP teacher (see --teacher); or quadratic SNAP alone.")
@output_option("Potential directory to create (use with 'rmsearch launch --potential').", required=True,
               type=click.Path(path_type=Path))
@click.option("--twojmax", type=click.IntRange(0, 12), default=6, help="SNAP band limit 2J (6: 30 descriptors, 8: 55).")
@click.option("--rcut", type=FiniteFloat(0, 10, True), default=3.5, help="SNAP descriptor cutoff (A).")
@click.option("--quadratic/--linear", default=True, help="Quadratic SNAP (B_i B_j terms) or linear.")
@click.option("--teacher/--no-teacher", default=True, show_default=True,
              help="UF3 only: also fit a quadratic SNAP on DATA (kept in OUT/teacher) and add its energies, "
                   "forces and stresses on the minima of random-start searches with the UF3 being fitted "
                   "(rmsearch/distill.py). Without it, UF3 ranks over-coordinated phases below diamond.")
@click.option("--rounds", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Teacher rounds: UF3 search, teacher labels, refit.")
@click.option("--distil-starts", type=click.IntRange(1, 100000), default=60, show_default=True,
              help="Random starts relaxed with the teacher, and with the UF3 in each round.")
@click.option("--distil-natoms", default="2-8", show_default=True, help="Atoms per cell of those starts (N or MIN-MAX).")
@click.option("--energy-weight", type=FiniteFloat(0, None), default=100.0, show_default=True,
              help="Weight of a teacher energy-per-atom row (eV) against a force row (eV/A).")
@click.option("--rc2", type=FiniteFloat(0, 10, True), default=3.5, help="UF3 two-body cutoff (A).")
@click.option("--rc3", type=FiniteFloat(0, 10, True), default=2.2,
              help="UF3 three-body cutoff on r_ij and r_ik (A); r_jk spans up to twice it.")
@click.option("--n2", type=click.IntRange(1, 1000), default=14, help="UF3 two-body knot intervals.")
@click.option("--n3", type=click.IntRange(1, 100), default=6, help="UF3 three-body knot intervals on r_ij, r_ik (and r_jk).")
@click.option("--alpha", type=FiniteFloat(0, None), default=None,
              help="Ridge strength on unit-norm columns (dimensionless) [default: 1 for snap, 1e-6 for uf3].")
@click.option("--stress-weight", type=FiniteFloat(0, None), default=1.0,
              help="Weight of a stress row (-V sigma / N, eV) against a force row (eV/A).")
@click.option("--zbl", "zbl", default="0.8,1.2", help="ZBL core INNER,OUTER switching radii (A), or 'none'.")
@click.option("--fit-core", is_flag=True, help="Subtract the core from the labels before fitting.")
@click.option("--holdout", type=FiniteFloat(0, 1, False, True), default=0.1, help="Fraction of frames held out for the error report.")
@click.option("--seed", type=SEED, default=0, help="Seed of the holdout draw and of the teacher rounds' starts.")
@click.option("--mace-model", type=click.Path(path_type=Path), default=None,
              help="A MACE .model to evaluate on the same held-out frames, for comparison.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def fit_native_command(data: Path, kind: str, output: Path, twojmax: int, rcut: float, quadratic: bool,
                       teacher: bool, rounds: int, distil_starts: int, distil_natoms: str, energy_weight: float,
                       rc2: float, rc3: float, n2: int, n3: int, alpha: float | None, stress_weight: float,
                       zbl: str, fit_core: bool, holdout: float, seed: int, mace_model: Path | None,
                       overwrite: bool) -> None:
    """Fit a native potential on DATA (rmdata extxyz/HDF5: REF_forces, REF_stress) and write OUT."""
    from rmsearch.distill import DistillSettings
    from rmsearch.native import SnapSettings, UF3Settings, fit_native

    out = check_output(output, inputs=[data, mace_model], overwrite=overwrite, folder=True)

    inner, outer = _zbl(zbl)
    _natoms(distil_natoms)
    shared = dict(stress_weight=stress_weight, zbl_inner=inner, zbl_outer=outer, fit_core=fit_core,
                  holdout=holdout, seed=seed)
    if alpha is not None:
        shared["alpha"] = alpha
    if kind == "snap":
        settings = SnapSettings(twojmax=twojmax, rcut=rcut, quadratic=quadratic, **shared)
        what = f"{'quadratic' if quadratic else 'linear'}, 2J={twojmax}, rcut {rcut:g} A"
    else:
        settings = UF3Settings(rc2=rc2, rc3=rc3, n2=n2, n3=n3, n3jk=n3, **shared)
        what = f"two-body to {rc2:g} A, three-body to {rc3:g} A"
    distil = teacher and DistillSettings(rounds=rounds, teacher_starts=distil_starts, starts_per_round=distil_starts,
                                         natoms=distil_natoms, energy_weight=energy_weight, seed=seed)
    report = fit_native(data, out, kind=kind, settings=settings, mace_model=mace_model, overwrite=overwrite,
                        teacher=distil)
    click.echo(f"wrote {out}: {kind} ({what}, {report['n_coefficients']} coefficients) from "
               f"{report['n_frames']} frames in {report['wall_s']:.1f} s")
    click.echo(f"{'split':<18}{'frames':>7}{'force RMSE (eV/A)':>20}{'stress RMSE (eV/A^3)':>23}")
    rows = [("train", report["train"]), ("holdout", report["holdout"]),
            ("holdout (no core)", report.get("holdout_snap_only")),
            ("holdout (MACE)", report.get("mace_holdout"))]
    for name, err in rows:
        if err:
            click.echo(f"{name:<18}{err['n_frames']:>7}{err['force_rmse_eV_per_A']:>20.4f}"
                       f"{err['stress_rmse_eV_per_A3']:>23.5f}")
    if "distillation" in report:
        d = report["distillation"]
        t = d["teacher"]["holdout_snap_only"] or d["teacher"]["holdout"]
        click.echo(f"teacher: quadratic SNAP in {out / 'teacher'} (holdout force RMSE without core "
                   f"{t['force_rmse_eV_per_A']:.4f} eV/A); {d['teacher_frames']} teacher frames; UF3-teacher "
                   "energy gap on the UF3's own minima per round (eV/atom): "
                   + ", ".join(f"{r['energy_gap_eV_per_atom']:.4f}" for r in d["rounds"]))
    v = report["verification"]
    click.echo(f"self-check LAMMPS pair style vs fit: max |dF| {v['forces_eV_per_A']:.1e} eV/A, "
               f"max |dsigma| {v['stress_eV_per_A3']:.1e} eV/A^3; report in {out / 'fit.json'}")
