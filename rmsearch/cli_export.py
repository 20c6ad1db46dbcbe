"""``rmsearch export``: turn a trained model into a potential directory."""

from __future__ import annotations

from pathlib import Path

import click

from rmdata.cliutils import CONTEXT, output_option


@click.command("export", context_settings=CONTEXT)
@click.argument("model", type=click.Path(path_type=Path))
@output_option("Potential directory to create.", required=True, type=click.Path(path_type=Path))
@click.option("--training", type=click.Path(path_type=Path), default=None,
              help="Training extxyz (rmdata output) for the per-element volumes (A^3/atom); "
                   "without it covalent-radius volumes are used.")
@click.option("--backend", type=click.Choice(["mace"]), default="mace",
              help="How LAMMPS evaluates the model (mace: in-process via fix external).")
@click.option("--verify/--no-verify", default=True,
              help="Check LAMMPS forces/stress against MACECalculator (1e-6 eV/A, eV/A^3).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
def export_command(model: Path, output: Path, training: Path | None, backend: str, verify: bool,
                   overwrite: bool) -> None:
    """Export MODEL (a mace_run_train .model file) to a potential directory for rmsearch.

    MODEL may also be a shipped model, model:NAME ('rmsearch models list'): its verified
    potential directory is copied to -o/--output (for use outside the package, e.g. LAMMPS).
    """
    from rmsearch.api import export
    from rmsearch.registry import PREFIX

    pot = export(model, output, training=training, backend=backend, verify=verify, overwrite=overwrite)
    if str(model).startswith(PREFIX):
        click.echo(f"wrote {output}: shipped model {str(model).removeprefix(PREFIX)} (backend {pot.backend}, "
                   f"elements {' '.join(pot.elements)}), files checked against its card")
        return
    vols = ", ".join(f"{e} {v:.2f}" for e, v in pot.volumes.items())
    click.echo(f"wrote {output}: backend {pot.backend}, elements {' '.join(pot.elements)}, "
               f"cutoff {pot.cutoff:g} A")
    click.echo(f"volumes (A^3/atom): {vols} ({pot.meta['volumes_source']})")
    if "verification" in pot.meta:
        v = pot.meta["verification"]
        click.echo("self-check vs MACECalculator: max |dF| {:.1e} eV/A, max |dsigma| {:.1e} eV/A^3, "
                   "|dE| {:.1e} eV".format(v["forces_eV_per_A"], v["stress_eV_per_A3"], v["energy_eV"]))
    else:
        click.echo("self-check skipped (--no-verify)")
