"""The options of a search, declared once: :class:`SearchOptions`.

Everything else about a search option is derived from its field here: the click options
of ``rmsearch launch`` (:func:`search_click_options`), where its value lives in
``config.json`` and how :mod:`rmsearch.config` builds, reads and merges that file
(:data:`START_OPTIONS`, :data:`RELAX_OPTIONS`, :data:`TOP_LEVEL_OPTIONS`), which
options may change when a run directory is resumed (:data:`RESULT_KEYS`,
:data:`RESUMABLE_KEYS`, :data:`EXECUTION_KEYS`), and the table in :class:`SearchOptions`' docstring
(:func:`options_table`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from rmdata.cliutils import SEED, FiniteFloat
from rmsearch.engine import CoreRepulsion
from rmsearch.protocol import RELAX_OPTIMIZERS, RelaxSettings
from rmsearch.starts import StartSpec, parse_range, parse_spacegroup_weights, parse_wyckoff

#: ``on_resume`` of an option that changes results: a resume must give the stored value.
FIXED = "fixed"
#: ``on_resume`` of an execution setting: a resume may change it (config.json is updated).
FREE = "free"


def _default(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (the engine's dataclasses are the
    one home of the start and relaxation defaults)."""
    return cls.__dataclass_fields__[name].default


def _option(default: Any, help: str, *, config: str, unit: str | None = None,
            cli: tuple[str, ...] = (), click_type: click.ParamType | None = None, flag: bool = False,
            default_text: str | None = None, from_cli: Callable[[str, str], Any] | None = None,
            on_resume: str = FIXED, result_key: str | None = None, one_of: str | None = None):
    """A :class:`SearchOptions` field; the keywords become its metadata (see the class)."""
    if result_key is None and on_resume == FIXED:
        result_key = config.split(".")[0]
    return dataclasses.field(default=default, metadata={
        "help": help, "unit": unit, "config": config, "cli": cli, "click_type": click_type, "flag": flag,
        "default_text": default_text, "from_cli": from_cli, "on_resume": on_resume,
        "result_key": result_key, "one_of": one_of})


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """The options that describe a search (``rmsearch launch``, :func:`rmsearch.runner.launch`,
    :func:`rmsearch.config.build_config`), each declared once as a field.

    A field's default is the default of the search; the engine's own dataclasses hold the
    start defaults (:class:`rmsearch.starts.StartSpec`) and the relaxation defaults
    (:class:`rmsearch.relax.RelaxSettings`), and the fields here take theirs. Each field's
    ``metadata`` says:

    - ``help``: the ``--help`` text, without its ``[default: ...]`` (added from the default
      or ``default_text``; ``""`` hides it) and final full stop; ``unit``: the unit of the
      value (also in the help text), ``None`` for counts, names and factors;
    - ``cli``: the option's names (default ``--field-name``), ``click_type``: its click type
      (the shared ones of :mod:`rmdata.cliutils`), ``flag``: an on/off flag,
      ``from_cli``: a parser ``(text, option name) -> value`` for options given as text;
    - ``config``: where ``config.json`` stores it: a top-level key (``"seed"``), a field of
      the start spec (``"start.natoms"``) or of the relaxation settings (``"relax.fmax"``);
    - ``on_resume``: :data:`FIXED` (it changes results: a resume must agree with the stored
      value, compared through the config.json key ``result_key``, by default the top
      of ``config``) or :data:`FREE` (an execution setting that a resume may change);
    - ``one_of``: options of the same group are exclusive (exactly one of system,
      composition, molecule; giving one on a resume replaces the stored one).

    On the command line every option defaults to ``None`` ("not given"): a new run
    directory then takes the defaults here, a resumed one its stored values.

    The options (generated from the fields by :func:`options_table`):

    """

    seed: int = _option(0, "Search seed; run r starts from rng([seed, r])", config="seed", click_type=SEED)
    system: str | None = _option(
        None, "Elements of the search, e.g. Li-S: any Li_a S_b with an atom count in --natoms",
        config="system", result_key="start", one_of="kind", default_text="")
    composition: str | None = _option(
        None, "One formula unit, e.g. Li2S: whole formula units fitting --natoms",
        config="composition", result_key="start", one_of="kind", default_text="")
    molecule: str | None = _option(
        None, "Exact molecule, e.g. C4H6O: random atoms in a 10x5x5 A box, no periodicity",
        config="molecule", result_key="start", one_of="kind", default_text="")
    natoms: str | tuple[int, int] = _option(_default(StartSpec, "natoms"),
                                            "Atoms per cell, a number or a range", config="start.natoms")
    spacegroup: int | str | None = _option(
        _default(StartSpec, "spacegroup"),
        "Space-group start: a number 1-230, 'random' (a group drawn per start; pyxtal Wyckoff placement) "
        "or 'mixed' (even run ids 'random', odd ones without symmetry)",
        config="start.spacegroup", cli=("--spacegroup", "--spacegroups"))
    spacegroup_weights: dict[int, float] | None = _option(
        None,
        "JSON file of space group number -> weight: --spacegroups random/mixed draw each start's group "
        "with these weights among the groups that hold it (a centred group's start is the primitive cell "
        "of its conventional placement), e.g. a prior from known crystals (rmsearch.symmetry.SpacegroupPrior)",
        config="start.spacegroup_weights", from_cli=parse_spacegroup_weights, default_text="none: uniform")
    wyckoff: tuple | None = _option(
        None,
        "With --spacegroup N: Wyckoff sites to place the atoms on, element:sites as Na:4a,Cl:4b "
        "(several sites of one element joined by +, O:4c+8d; pyxtal's standard setting, atoms of the "
        "conventional cell), several templates joined by ; (one drawn per start), or a JSON file of a "
        "list of templates, e.g. from known crystals (rmsearch.symmetry.WyckoffPrior)",
        config="start.wyckoff", from_cli=parse_wyckoff, default_text="none: pyxtal chooses")
    volume_factor: tuple[float, float] = _option(
        _default(StartSpec, "volume_factor"),
        "Range of the random factor on the per-element volumes (A^3/atom)",
        config="start.volume_factor", from_cli=parse_range)
    minsep_factor: float = _option(
        _default(StartSpec, "minsep_factor"),
        "Minimum separation of a start as a fraction of the covalent radii sum (at least 0.7 A)",
        config="start.minsep_factor", click_type=FiniteFloat(0, 3))
    fmax: float = _option(_default(RelaxSettings, "fmax"), "Force tolerance, max |F| in eV/A", unit="eV/A",
                          config="relax.fmax", click_type=FiniteFloat(0, None, True))
    smax_gpa: float = _option(_default(RelaxSettings, "smax_gpa"), "Stress tolerance, max |sigma_ij| in GPa",
                              unit="GPa", config="relax.smax_gpa", cli=("--smax",),
                              click_type=FiniteFloat(0, None, True))
    max_steps: int = _option(_default(RelaxSettings, "max_steps"),
                             "Force calls per relaxation before it counts as not_converged",
                             unit="force calls", config="relax.max_steps", click_type=click.IntRange(1, 10**7))
    dtype: str = _option(_default(RelaxSettings, "dtype"),
                         "Precision of the model evaluation (mace backend); float32 is ~1.4x faster on CPU "
                         "and reaches the same minima",
                         config="relax.dtype", click_type=click.Choice(["float32", "float64"]))
    optimizer: str = _option(
        _default(RelaxSettings, "optimizer"),
        "Relaxation method: auto (what the potential directory recommends, else "
        "fire2-lbfgs), FIRE 2.0 until max|F| < 2 eV/A then L-BFGS (fire2-lbfgs), FIRE 2.0 "
        "alone, ASE's FIRE, L-BFGS alone (rmsearch/optimizers.py), or conjugate gradients "
        "with fix box/relax inside LAMMPS (lammps-cg, rmsearch/lammps_min.py)",
        config="relax.optimizer", click_type=click.Choice(list(RELAX_OPTIMIZERS)))
    kick: float = _option(
        _default(RelaxSettings, "kick"),
        "Second stage of the molecule protocol: displace every atom of the relaxed structure "
        "by uniform noise in +-KICK A per component and relax again to --kick-fmax "
        "(paper: 0.75 A)", unit="A", config="relax.kick", click_type=FiniteFloat(0, 5),
        default_text="0, no kick stage")
    kick_fmax: float = _option(_default(RelaxSettings, "kick_fmax"),
                               "Force tolerance of the kick stage, max |F| in eV/A", unit="eV/A",
                               config="relax.kick_fmax", click_type=FiniteFloat(0, None, True))
    keep_symmetry: bool = _option(
        _default(RelaxSettings, "keep_symmetry"),
        "With --spacegroup: relax within the start's space group (forces, stress and steps "
        "projected onto its symmetric subspace, rmsearch/symmetry.py); lammps-cg then uses "
        "fire2-lbfgs", config="relax.keep_symmetry", flag=True)
    release_symmetry: bool = _option(
        _default(RelaxSettings, "release_symmetry"),
        "With --keep-symmetry: relax freely from the symmetric minimum as a second stage",
        config="relax.release_symmetry", flag=True)
    core_repulsion: CoreRepulsion = _option(
        _default(RelaxSettings, "core_repulsion"),
        "The relaxation's short-range overlay below rc_ab, as [zbl,]m=M,rc=A[,scale=F]: g(r) = "
        "m (1 - r^2/rc_ab^2)^2 (m in eV), or with zbl the ZBL nuclear repulsion times m (1 - "
        "r^2/rc_ab^2)^2, which grows as 1/r where the first is a barrier of height m; rc_ab = rc "
        "for every element pair, or with scale, max(rc, F x the pair's covalent radii sum) (0.7: "
        "the distance below which the analysis calls a pair fused; per-pair forms need a potential "
        "of at most 11 elements)", config="relax.core_repulsion", from_cli=CoreRepulsion.parse)
    volume_steps: int = _option(
        _default(RelaxSettings, "volume_steps"),
        "Crystals: a first stage of up to N force calls at the start's volume (cell shape and "
        "atoms free, to --volume-fmax), then the free relaxation from there, as the paper's "
        "reference code relaxes MP-20 starts (100)", unit="force calls", config="relax.volume_steps",
        click_type=click.IntRange(0, 10**6), default_text="0, no constant-volume stage")
    volume_fmax: float = _option(_default(RelaxSettings, "volume_fmax"),
                                 "Force tolerance of the constant-volume stage, max |F| in eV/A",
                                 unit="eV/A", config="relax.volume_fmax",
                                 click_type=FiniteFloat(0, None, True))
    run_timeout_s: float = _option(
        600.0, "Wall-time limit of one relaxation in s; a run past it is recorded as 'timeout' "
        "and its worker restarted (0 = no limit; may change on resume)", unit="s",
        config="run_timeout_s", cli=("--run-timeout",), click_type=FiniteFloat(0), on_resume=FREE)


FIELDS = dataclasses.fields(SearchOptions)
#: Every search option (the keyword arguments of build_config and launch besides potential/nruns).
OPTION_NAMES = tuple(f.name for f in FIELDS)
#: Options stored as fields of the start spec (config.json ``start``).
START_OPTIONS = tuple(f.name for f in FIELDS if f.metadata["config"].startswith("start."))
#: Options stored as relaxation settings (config.json ``relax``).
RELAX_OPTIONS = tuple(f.name for f in FIELDS if f.metadata["config"].startswith("relax."))
#: Options stored as top-level keys of config.json, under their own name.
TOP_LEVEL_OPTIONS = tuple(f.name for f in FIELDS if "." not in f.metadata["config"])
#: The exclusive options that say what is searched (exactly one is given).
KIND_OPTIONS = tuple(f.name for f in FIELDS if f.metadata["one_of"] == "kind")
#: config.json fields whose change would change results: resume refuses if they differ.
RESULT_KEYS = (*dict.fromkeys(f.metadata["result_key"] for f in FIELDS if f.metadata["on_resume"] == FIXED),
               "potential_sha256")
#: config.json keys of the execution settings (options a resume may change; not in provenance).
EXECUTION_KEYS = tuple(f.metadata["config"] for f in FIELDS if f.metadata["on_resume"] == FREE)
#: config.json fields a resume may change (stored anew): the run count, the potential's
#: location (same contents) and the execution settings.
RESUMABLE_KEYS = ("nruns", "potential", *EXECUTION_KEYS)


def option_field(name: str) -> dataclasses.Field:
    """The :class:`SearchOptions` field of option ``name`` (KeyError if there is none)."""
    for field in FIELDS:
        if field.name == name:
            return field
    raise KeyError(f"no search option {name!r}; the options are {', '.join(OPTION_NAMES)}")


def option_flag(name: str) -> str:
    """The command-line name of option ``name`` (``"smax_gpa"`` -> ``"--smax"``)."""
    return _cli_names(option_field(name))[0]


def _cli_names(field: dataclasses.Field) -> tuple[str, ...]:
    return field.metadata["cli"] or (f"--{field.name.replace('_', '-')}",)


def _default_text(field: dataclasses.Field) -> str:
    text = field.metadata["default_text"]
    if text is not None:
        return text
    value = field.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "-".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def cli_help(field: dataclasses.Field) -> str:
    """The ``--help`` text of a field: its help, ``[default: ...]``, a full stop."""
    default = _default_text(field)
    return field.metadata["help"] + (f" [default: {default}]" if default else "") + "."


def search_click_options(func: Callable) -> Callable:
    """Decorator: one click option per :class:`SearchOptions` field, in field order, each
    ``None`` when not given (so that a resume keeps the stored value)."""
    for field in reversed(FIELDS):
        meta = field.metadata
        kwargs: dict[str, Any] = {"help": cli_help(field)}
        if meta["flag"]:
            kwargs.update(is_flag=True, default=None)
        elif meta["click_type"] is not None:
            kwargs["type"] = meta["click_type"]
        func = click.option(*_cli_names(field), field.name, **kwargs)(func)
    return func


def click_option(name: str, help: str) -> Callable:
    """Decorator: search option ``name`` as an option of another command (``rmsearch relax``)
    with its own ``help``: the option's names, click type and default (shown) come from
    its :class:`SearchOptions` field."""
    field = option_field(name)
    parse, flag = field.metadata["from_cli"], option_flag(name)

    def from_text(ctx, param, value):  # options given as text are parsed as launch parses them
        return parse(value, flag) if parse is not None and isinstance(value, str) else value

    return click.option(*_cli_names(field), name, type=field.metadata["click_type"], default=field.default,
                        show_default=True, help=help, callback=from_text)


def parse_cli_values(values: dict[str, Any]) -> dict[str, Any]:
    """The search options among ``values`` (click's, by field name), with options given as
    text parsed (``--volume-factor 0.8-1.2`` -> (0.8, 1.2)); ``None`` (or empty text) is
    ``None``, not given."""
    out = {}
    for field in FIELDS:
        if field.name in values:
            value, parse = values[field.name], field.metadata["from_cli"]
            if parse is not None:
                value = parse(value, option_flag(field.name)) if value else None
            out[field.name] = value
    return out


def options_table() -> str:
    """The search options as a reST list, one line each: name, command-line name, default,
    unit, config.json place, resume rule, help."""
    rows = []
    for field in FIELDS:
        meta = field.metadata
        resume = "may change" if meta["on_resume"] == FREE else f"must match ({meta['result_key']})"
        unit = f"; unit {meta['unit']}" if meta["unit"] else ""
        rows.append(f"- ``{field.name}`` (``{option_flag(field.name)}``; default "
                    f"{_default_text(field) or 'none'}{unit}; config.json ``{meta['config']}``; "
                    f"on resume {resume}): {meta['help']}.")
    return "\n".join(rows)


if SearchOptions.__doc__:  # None under python -OO
    SearchOptions.__doc__ += "\n".join("    " + line for line in options_table().splitlines()) + "\n"
