"""``rmdata`` command line: make, datasets, info, mace-command, convert.

Each command parses its options and calls a plain library function.
"""

from __future__ import annotations

if __name__ == "__main__":  # ``python -m rmdata.cli``: a stop signal while this loads ends in one line
    from rmdata.console import quiet_start

    _loaded = quiet_start()

import os  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from rmdata.cliutils import (CONTEXT, SEED, WORKERS, FiniteFloat, FloatList, RMGroup, check_output,  # noqa: E402
                             output_option, overwrite_option, setup_logging)
from rmdata.errors import RMError  # noqa: E402
from rmdata.limits import BOUNDS, COPIES_MAX  # noqa: E402
from rmdata.version import __version__  # noqa: E402


def _names(value: str | None) -> list[str] | None:
    """A comma-separated list of names (None when not given)."""
    return [e.strip() for e in value.split(",") if e.strip()] if value else None


def _formula_list(value: str | None) -> list[str] | None:
    """Formulas given as ``F1,F2`` or ``@FILE`` (one a line, # comments)."""
    if not value:
        return None
    if value.startswith("@"):
        path = value[1:]
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RMError(f"--exclude-formulas {value}: cannot read {path} ({exc})") from None
        return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]
    return _names(value)


@click.group(cls=RMGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="rmdata")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Response-matched training sets for machine-learned interatomic potentials."""
    setup_logging(verbose)


@main.command()
@click.option("--dataset", "-d", help="Registry name (see 'rmdata datasets'), e.g. mp20, mp20-subset, "
              "molecules, qm7b, diamond.")
@click.option("--input", "-i", "input_path", type=click.Path(),
              help="Any ASE-readable file or folder (extxyz, CIF, POSCAR, ASE db) instead of --dataset.")
@output_option("Output file (.xyz/.extxyz or .h5/.hdf5). Default: <dataset>.xyz, or <input stem>.xyz "
               "(<input stem>.rm.xyz where that would be the input itself).", type=click.Path())
@overwrite_option("output file")
@click.option("--format", "fmt", type=click.Choice(["extxyz", "hdf5"]), default=None,
              help="Output format (default: from the suffix; must agree with it).")
@click.option("--preset", type=click.Choice(["crystal", "diamond", "molecule"]), default=None,
              help="Noise/label preset (default: from the dataset; molecules always use 'molecule').")
@click.option("--split", default=None, help="Dataset split: train, val, test (default train).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use at most N reference structures.")
@click.option("--elements", default=None, help="Keep only structures made of these elements, e.g. Li,S.")
@click.option("--containing", default=None,
              help="Keep only structures that contain at least one of these elements, e.g. Li,S "
                   "(a chemical-system training set).")
@click.option("--also-stoichiometry", default=None,
              help="Also keep every structure of these anonymous stoichiometries, e.g. AB2 (Li2S, SiO2, "
                   "CaF2), that --elements/--containing would drop: a chemical-system set plus the "
                   "known prototypes of the stoichiometry asked about. --exclude-formulas still applies.")
@click.option("--exclude-formulas", default=None,
              help="Hold these compositions out, e.g. Li2S,C3H6O or @FILE (one formula a line): drops "
                   "every crystal of the same reduced formula and every molecule of the same formula.")
@click.option("--k", type=FiniteFloat(*BOUNDS["k"]), default=None,
              help="Spring constant k (eV/A^2), in (0, 1e4]. [preset: 1.0]")
@click.option("--levels", type=FloatList(*BOUNDS["levels"], max_items=100), default=None,
              help="Position-noise levels, comma-separated, each in [0, 1000]; max(levels) x step size "
                   "<= 5 A, with the step of each kind of structure labelled. [preset: 0,1,2,3,4,6,8,10,12,16,32]")
@click.option("--step-size", type=FiniteFloat(*BOUNDS["step_size"]), default=None,
              help="Position noise per level (A), in [0, 1]. [preset: crystals 0.05, molecules 0.1]")
@click.option("--strains", type=FloatList(*BOUNDS["strains"], allow_empty=True, max_items=100), default=None,
              help="Isotropic cell strains, comma-separated, each in [-0.5, 0.5] (crystals only; 'none' "
                   "for no strained frames). [preset: 11 values in -0.1..0.1]")
@click.option("--rc", type=FiniteFloat(*BOUNDS["rc"]), default=None,
              help="Repulsion cutoff (A), in [0, 3]; 0 disables. [preset: crystals 0.75, molecules 0.7]")
@click.option("--youngs", type=FiniteFloat(*BOUNDS["youngs"]), default=None,
              help="Young's modulus E (eV/A^3) of the isotropic stiffness behind the stress labels "
                   "(Poisson ratio 0.3), in (0, 1000]; crystals only. [preset: 1.0]")
@click.option("--copies", type=click.IntRange(1, COPIES_MAX), default=None,
              help="Noise draws per (strain, level). [preset: 1]")
@click.option("--raw-labels", is_flag=True,
              help="Reference-code labels: keep net force/torque (no rigid-motion removal).")
@click.option("--seed", type=SEED, default=0, help="Random seed; same seed gives identical bytes.")
@click.option("--workers", "-j", type=WORKERS, default=None, help="Worker processes (default: all cores).")
def make(dataset, input_path, output, overwrite, fmt, preset, split, limit, elements, containing,
         also_stoichiometry, exclude_formulas, k, levels, step_size, strains, rc, youngs, copies, raw_labels, seed, workers):
    """Perturb reference structures and write response-matched labels."""
    from rmdata.make import default_output, make_dataset

    if input_path is not None and not os.path.exists(input_path):
        raise RMError(f"--input {input_path}: no such file or folder")
    if output is None:
        output = default_output(dataset, input_path, fmt)
    check_output(output, inputs=[input_path], overwrite=overwrite)
    summary = make_dataset(
        output, dataset, input_path, fmt=fmt, preset=preset, split=split, limit=limit, seed=seed,
        workers=workers or os.cpu_count() or 1,
        elements=_names(elements), containing=_names(containing),
        exclude_formulas=_formula_list(exclude_formulas), also_stoichiometry=_names(also_stoichiometry),
        k=k, levels=levels, step_size=step_size,
        strains=strains, rc=rc, youngs=youngs, copies=copies, raw_labels=raw_labels,
        progress=True)
    click.echo(f"wrote {summary.output}: {summary.n_frames} frames from {summary.n_structures} structures "
               f"({summary.n_atoms_total} atoms; elements {', '.join(summary.elements)}) "
               f"in {summary.elapsed_s:.1f} s")
    if summary.skipped:
        click.echo(f"skipped {len(summary.skipped)} structure(s):", err=True)
        for msg in summary.skipped[:20]:
            click.echo(f"  {msg}", err=True)
        if len(summary.skipped) > 20:
            click.echo(f"  ... and {len(summary.skipped) - 20} more", err=True)


@main.command()
def datasets():
    """List the datasets with size, source and licence."""
    from rmdata.datasets import describe_datasets

    click.echo(describe_datasets())


@main.command()
@click.argument("path", type=click.Path())
def info(path):
    """Summarise a dataset file: frames, atoms, elements, labels, provenance."""
    from rmdata.summary import summarize

    click.echo(summarize(path))


@main.command("mace-command")
@click.argument("path", type=click.Path())
@click.option("--name", default=None, help="Model name (default: the file's stem).")
@click.option("--epochs", type=click.IntRange(1, 100000), default=None, help="Maximum epochs (default: the preset's, 50).")
@click.option("--r-max", type=FiniteFloat(0, None, True), default=None, help="Cutoff (A) (default: the preset's).")
@click.option("--channels", type=click.IntRange(1, 1024), default=None, help="MACE channels (default: the preset's, 32).")
@click.option("--max-L", "max_L", type=click.IntRange(0, 4), default=None,
              help="Highest L of the messages (default: the preset's, 1).")
@click.option("--correlation", type=click.IntRange(1, 5), default=None,
              help="Correlation order (body order - 1) of the product basis (default: MACE's, 3).")
@click.option("--batch-size", type=click.IntRange(1, 100000), default=None,
              help="Frames per batch (default: the preset's, 8; x4 with --device cuda).")
@click.option("--lr", type=FiniteFloat(0, None, True), default=None, help="Initial learning rate (default: the preset's, 0.01).")
@click.option("--lr-gamma", type=FiniteFloat(0, None, True), default=None,
              help="Exponential learning-rate decay per epoch, in (0, 1] (default: MACE's plateau scheduler).")
@click.option("--ema-decay", type=FiniteFloat(0, None, True), default=None,
              help="Exponential moving average of the weights with this decay, in (0, 1) (default: off).")
@click.option("--forces-weight", type=FiniteFloat(0, None, True), default=None, help="Force loss weight (default: 10).")
@click.option("--stress-weight", type=FiniteFloat(0, None, True), default=None, help="Stress loss weight (default: 100).")
@click.option("--eval-interval", type=click.IntRange(1, 100000), default=None,
              help="Epochs between validations and checkpoints (default: MACE's, 1).")
@click.option("--restart", is_flag=True,
              help="Resume from the newest checkpoint in checkpoints/ if there is one (--restart_latest).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default=None,
              help="Training precision (default: float64 on CPU, float32 on CUDA).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
              help="Training device; cuda also defaults to float32 and a 4x larger batch.")
@click.option("--readout", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True,
              help="Readout of the one-layer model: MACE's linear one (mace_run_train), or mlp, a "
                   "16-unit silu network (rmdata-mace-train, the same flags).")
@click.option("--readout-width", type=click.IntRange(1, 4096), default=None,
              help="Hidden units of the mlp readout (default: 16, MACE's); needs --readout mlp.")
@click.option("--seed", type=SEED, default=0, help="Training seed (>= 0).")
def mace_command_cmd(path, seed, **options):
    """Print the exact mace_run_train (or rmdata-mace-train) command for a dataset file."""
    from rmdata.mace import check_training_options, mace_command

    check_training_options(seed=seed, **options)
    for line in mace_command(path, seed=seed, **options):
        click.echo(line)


@main.command()
@click.argument("source", type=click.Path())
@click.argument("dest", type=click.Path())
@overwrite_option("DEST")
def convert(source, dest, overwrite):
    """Convert a dataset between extxyz and HDF5 (formats from the suffixes of SOURCE and DEST)."""
    from rmdata.io import format_for
    from rmdata.summary import convert as _convert

    check_output(dest, inputs=[source], overwrite=overwrite, option="DEST")
    format_for(dest)
    n = _convert(source, dest)
    click.echo(f"wrote {dest}: {n} frames")


if __name__ == "__main__":
    _loaded()
    main()
