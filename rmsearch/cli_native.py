"""``rmsearch fit-native``: fit a LAMMPS-native potential (SNAP) on an rmdata file."""

from __future__ import annotations

from pathlib import Path

import click

from rmdata.cliutils import CONTEXT
from rmdata.errors import RMError


def _zbl(text: str) -> tuple[float, float]:
    if text.lower() == "none":
        return 0.0, 0.0
    try:
        inner, outer = (float(x) for x in text.split(","))
    except ValueError:
        raise RMError(f"--zbl {text!r}: give INNER,OUTER in A (e.g. 0.8,1.2) or 'none'") from None
    return inner, outer


@click.command("fit-native", context_settings=CONTEXT)
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["snap"]), default="snap", help="Native MLIP to fit.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Potential directory to create (use with 'rmsearch launch --potential').")
@click.option("--twojmax", type=int, default=6, help="SNAP band limit 2J (6: 30 descriptors, 8: 55).")
@click.option("--rcut", type=float, default=3.5, help="Descriptor cutoff (A).")
@click.option("--quadratic/--linear", default=True, help="Quadratic SNAP (B_i B_j terms) or linear.")
@click.option("--alpha", type=float, default=1.0,
              help="Ridge strength on unit-norm descriptor columns (dimensionless).")
@click.option("--stress-weight", type=float, default=1.0,
              help="Weight of a stress row (-V sigma / N, eV) against a force row (eV/A).")
@click.option("--zbl", "zbl", default="0.8,1.2", help="ZBL core INNER,OUTER switching radii (A), or 'none'.")
@click.option("--fit-core", is_flag=True, help="Subtract the core from the labels before fitting.")
@click.option("--holdout", type=float, default=0.1, help="Fraction of frames held out for the error report.")
@click.option("--seed", type=int, default=0, help="Seed of the holdout draw.")
@click.option("--mace-model", type=click.Path(path_type=Path), default=None,
              help="A MACE .model to evaluate on the same held-out frames, for comparison.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def fit_native_command(data: Path, kind: str, out: Path, twojmax: int, rcut: float, quadratic: bool,
                       alpha: float, stress_weight: float, zbl: str, fit_core: bool, holdout: float,
                       seed: int, mace_model: Path | None, overwrite: bool) -> None:
    """Fit a SNAP potential on DATA (rmdata extxyz/HDF5: REF_forces, REF_stress) and write OUT."""
    from rmsearch.native import SnapSettings, fit_native

    inner, outer = _zbl(zbl)
    settings = SnapSettings(twojmax=twojmax, rcut=rcut, quadratic=quadratic, alpha=alpha,
                            stress_weight=stress_weight, zbl_inner=inner, zbl_outer=outer,
                            fit_core=fit_core, holdout=holdout, seed=seed)
    report = fit_native(data, out, kind=kind, settings=settings, mace_model=mace_model, overwrite=overwrite)
    click.echo(f"wrote {out}: {kind} ({'quadratic' if quadratic else 'linear'}, 2J={twojmax}, "
               f"rcut {rcut:g} A, {report['n_coefficients']} coefficients) from {report['n_frames']} frames "
               f"in {report['wall_s']:.1f} s")
    click.echo(f"{'split':<18}{'frames':>7}{'force RMSE (eV/A)':>20}{'stress RMSE (eV/A^3)':>23}")
    rows = [("train", report["train"]), ("holdout", report["holdout"]),
            ("holdout (no core)", report.get("holdout_snap_only")),
            ("holdout (MACE)", report.get("mace_holdout"))]
    for name, err in rows:
        if err:
            click.echo(f"{name:<18}{err['n_frames']:>7}{err['force_rmse_eV_per_A']:>20.4f}"
                       f"{err['stress_rmse_eV_per_A3']:>23.5f}")
    v = report["verification"]
    click.echo(f"self-check pair_style snap vs fit: max |dF| {v['forces_eV_per_A']:.1e} eV/A, "
               f"max |dsigma| {v['stress_eV_per_A3']:.1e} eV/A^3; report in {out / 'fit.json'}")
