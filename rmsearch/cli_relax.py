"""``rmsearch relax``: relax given structures with the search's protocol (parse, then call
:func:`rmsearch.api.relax_file`). The options it shares with ``launch`` take their names,
types and defaults from :class:`rmsearch.options.SearchOptions`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rmdata.cliutils import CONTEXT, output_option
from rmsearch.options import click_option


@click.command("relax", context_settings=CONTEXT)
@click.argument("inputs", type=click.Path(exists=True, path_type=Path))
@click.option("--potential", "potential_spec", required=True,
              help="Potential directory ('rmsearch export' / 'rmsearch fit-native') or model:NAME.")
@output_option(required=True, type=click.Path(path_type=Path),
               help="Output extxyz of the final structures (info: input_index, source_id, status, "
                    "energy eV, energy_per_atom eV/atom, pressure_gpa GPa, fmax eV/A, n_force_calls).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click_option("fmax", help="Force tolerance, max |F| in eV/A.")
@click_option("smax_gpa", help="Stress tolerance of periodic cells, max |sigma_ij + p| in GPa.")
@click_option("max_steps", help="Force calls per relaxation before it counts as not_converged.")
@click.option("--fixed-cell", is_flag=True, help="Relax atoms only; keep the cells of crystals fixed.")
@click_option("optimizer", help="Relaxation method, as for 'rmsearch launch --optimizer'.")
@click_option("dtype", help="Precision of the model evaluation (mace backend).")
@click_option("kick", help="Kick stage of the molecule protocol: uniform +-KICK A per component, then relax "
                          "again to --kick-fmax (0 = none).")
@click_option("kick_fmax", help="Force tolerance of the kick stage, eV/A.")
@click_option("volume_steps", help="Crystals: a first stage of up to N force calls at the input's volume "
                                  "(cell shape and atoms free, to --volume-fmax), then the free "
                                  "relaxation (0 = none; not with --kick or --fixed-cell).")
@click_option("volume_fmax", help="Force tolerance of the constant-volume stage, eV/A.")
@click_option("core_repulsion", help="Short-range overlay of the relaxation, [zbl,]m=M,rc=A[,scale=F], as "
                                     "for 'rmsearch launch --core-repulsion'.")
@click_option("seed", help="Seed of the kick stage (structure i draws from rng([seed, i])).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def relax_cmd(inputs: Path, potential_spec: str, output: Path, overwrite: bool, fixed_cell: bool,
              progress: bool, as_json: bool, **settings) -> None:
    """Relax every structure of INPUTS (any ASE-readable file or a folder of them; crystals
    and molecules) with the search's protocol, tolerances and statuses, and write the final
    structures with their energies, pressures and statuses to an extxyz file."""
    from rmsearch.api import relax_file

    summary = relax_file(inputs, potential_spec, output, overwrite=overwrite, progress=progress,
                         relax_cell=not fixed_cell, **settings)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in summary["status_counts"].items())
        click.echo(f"relaxed {summary['n_structures']} structures into {summary['output']}: {counts}")
