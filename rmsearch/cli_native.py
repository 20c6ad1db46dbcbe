"""``rmsearch fit-native``: fit a LAMMPS-native potential (SNAP or UF3) on an rmdata file.

The fit's options are the fields of its settings classes (:class:`rmsearch.snap.SnapSettings`,
:class:`rmsearch.uf3.UF3Settings`, :class:`rmsearch.distill.DistillSettings`), read from
their metadata (:func:`rmsearch.fitting.setting`): help, unit, bounds and default are
declared once, there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rmdata.cliutils import CONTEXT, WORKERS, FiniteFloat, check_output, output_option
from rmdata.errors import RMError
from rmsearch.distill import DistillSettings
from rmsearch.fitting import FitSettings
from rmsearch.native import DEFAULT_KIND, KINDS, fit_native
from rmsearch.pool import default_workers
from rmsearch.snap import SnapSettings
from rmsearch.uf3 import UF3Settings

#: The settings classes whose fields are options of ``fit-native``, in --help order.
OPTION_CLASSES = (SnapSettings, UF3Settings, DistillSettings)


def _default(cls: type, name: str) -> Any:
    return cls.__dataclass_fields__[name].default


def _option(fields: list[tuple[type, dataclasses.Field]]) -> Callable:
    """The click option of one settings field (declared in one or more classes): type and
    bounds from the field's annotation and metadata, help with the unit, and the default;
    where the classes' defaults differ, none (each class keeps its own) and help names them."""
    cls, f = fields[0]
    meta = f.metadata
    decl = meta["option"] if isinstance(meta["option"], str) else "--" + f.name.replace("_", "-")
    text = meta["help"] + (f" ({meta['unit']})" if meta["unit"] else "") + "."
    defaults = {getattr(c, "kind", c.__name__): g.default for c, g in fields}
    default = f.default
    if len(set(defaults.values())) > 1:
        default = None
        text += " [default: " + ", ".join(f"{v:g} for {k}" for k, v in defaults.items()) + "]"
    kwargs: dict[str, Any] = {"default": default, "help": text}
    annotation = f.type if isinstance(f.type, str) else f.type.__name__
    if annotation == "bool":
        if "/" not in decl:  # an on/off pair ("--quadratic/--linear") is a flag by itself
            kwargs["is_flag"] = True
    elif annotation == "int":
        kwargs["type"] = click.IntRange(*meta["bounds"]) if meta["bounds"] else int
    elif annotation in ("float", "float | None"):
        kwargs["type"] = FiniteFloat(*meta["bounds"])
    else:
        kwargs["type"] = str
    return click.option(decl, f.name, **kwargs)


def settings_options(*classes: type) -> Callable:
    """Decorator adding one option per settings field of ``classes`` (metadata with
    ``option`` not False and no ``follows``); a name shared by several classes is one option."""
    by_name: dict[str, list[tuple[type, dataclasses.Field]]] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if "help" in f.metadata and f.metadata["option"] is not False and not f.metadata["follows"]:
                by_name.setdefault(f.name, []).append((cls, f))
    options = [_option(fields) for fields in by_name.values()]

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def settings_from_options(cls: type, values: dict[str, Any]) -> Any:
    """An instance of ``cls`` with each field taken from ``values`` (the option of its name,
    or of ``follows``) where given (not None), the dataclass default otherwise."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        source = f.metadata.get("follows") or f.name
        if values.get(source) is not None:
            kwargs[f.name] = values[source]
    return cls(**kwargs)


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
@click.option("--kind", type=click.Choice(list(KINDS)), default=DEFAULT_KIND, show_default=True,
              help="Native MLIP to fit: UF3, two- plus three-body B-splines (~20-40x cheaper per force "
                   "call than SNAP), taught by a SNAP teacher (see --teacher); or quadratic SNAP alone. Both fit "
                   "any number of elements, crystals and molecules alike; UF3's three-body coefficients grow "
                   "as the cube of the element count (see --n3). SNAP fits one "
                   "coefficient block per element: K bispectrum components (K = 30 at 2J = 6, 55 at 8) when "
                   "linear, K + K(K+1)/2 (495, 1595) when quadratic, so the coefficients grow linearly with "
                   "the elements; a fit whose design matrix would not fit in memory is refused.")
@output_option("Potential directory to create (use with 'rmsearch launch --potential').", required=True,
               type=click.Path(path_type=Path))
@click.option("--teacher/--no-teacher", default=True, show_default=True,
              help="UF3 only: also fit a quadratic SNAP on DATA (kept in OUT/teacher) and add its energies, "
                   "forces and stresses on the minima of random-start searches with the UF3 being fitted "
                   "(rmsearch/distill.py). Without it, UF3 ranks over-coordinated phases below diamond.")
@settings_options(*OPTION_CLASSES)
@click.option("--zbl", "zbl",
              default=f"{_default(FitSettings, 'zbl_inner')},{_default(FitSettings, 'zbl_outer')}",
              help="ZBL core INNER,OUTER switching radii (A) of a C-C pair, or 'none'; every element pair "
                   "gets a core, its radii scaled by its covalent-radius sum (C-H 0.56,0.84; Na-Cl 1.41,2.12 "
                   "with the default) or, with --zbl-contacts, by its shortest distance in the training "
                   "references.")
@click.option("--mace-model", type=click.Path(path_type=Path), default=None,
              help="A MACE .model to evaluate on the same held-out frames, for comparison.")
@click.option("--workers", "-j", type=WORKERS, default=None,
              help="Processes computing the rows of a streamed fit (--solver) [default: the cores this process "
                   "may use]; the potential does not depend on it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
def fit_native_command(data: Path, kind: str, output: Path, teacher: bool, zbl: str, mace_model: Path | None,
                       workers: int | None, overwrite: bool, **values: Any) -> None:
    """Fit a native potential on DATA (rmdata extxyz/HDF5: REF_forces, and REF_stress of
    crystals; molecule frames have no stress rows) and write OUT."""
    out = check_output(output, inputs=[data, mace_model], overwrite=overwrite, folder=True)

    values["zbl_inner"], values["zbl_outer"] = _zbl(zbl)
    _natoms(values["natoms"])
    settings = settings_from_options(UF3Settings if kind == "uf3" else SnapSettings, values)
    if isinstance(settings, SnapSettings):
        what = f"{'quadratic' if settings.quadratic else 'linear'}, 2J={settings.twojmax}, rcut {settings.rcut:g} A"
    else:
        what = f"two-body to {settings.rc2:g} A, three-body to {settings.rc3:g} A"
    distill = teacher and settings_from_options(DistillSettings, values)
    report = fit_native(data, out, kind=kind, settings=settings, mace_model=mace_model, overwrite=overwrite,
                        teacher=distill, workers=workers or default_workers())
    click.echo(f"wrote {out}: {kind} ({what}, {report['n_coefficients']} coefficients) from "
               f"{report['n_frames']} frames in {report['wall_s']:.1f} s"
               + (" (streamed normal equations; errors on a sample of the frames)"
                  if report["solver"] == "normal" else ""))
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
