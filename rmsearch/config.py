"""A search's ``config.json``: build it from the options, read it, check a resume against it.

``RUNDIR/config.json`` holds the whole search configuration, written once by
:func:`init_rundir`: ``nruns``, ``seed``, ``system``/``composition``/``molecule``,
``start`` (the :class:`rmsearch.starts.StartSpec`), ``potential`` (absolute path) and
``potential_sha256`` (a fingerprint of its files), ``relax`` (the
:class:`rmsearch.relax.RelaxSettings`), ``run_timeout_s`` and ``provenance``. Where each
search option is stored, and which may change on a resume, is declared with the option in
:class:`rmsearch.options.SearchOptions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from rmdata.errors import RMError
from rmdata.utils import provenance, write_json_atomic
from rmsearch.options import (
    EXECUTION_KEYS,
    FIELDS,
    KIND_OPTIONS,
    OPTION_NAMES,
    RELAX_OPTIONS,
    RESULT_KEYS,
    RESUMABLE_KEYS,
    START_OPTIONS,
    TOP_LEVEL_OPTIONS,
    SearchOptions,
    option_field,
    option_flag,
)
from rmsearch.starts import StartSpec, make_spec

log = logging.getLogger(__name__)

CONFIG_FORMAT = 1
#: Fields every config.json has (:func:`read_config` checks them).
REQUIRED_FIELDS = ("nruns", "seed", "start", "relax", "potential")


def potential_fingerprint(directory: str | os.PathLike) -> str:
    """SHA-256 over the names and contents of the files of a potential directory."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            h.update(path.name.encode() + b"\0")
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def relax_settings_to_dict(settings) -> dict[str, Any]:
    """JSON form of :class:`rmsearch.relax.RelaxSettings`."""
    return dataclasses.asdict(settings)


def relax_settings_from_dict(data: dict[str, Any]):
    """Inverse of :func:`relax_settings_to_dict`."""
    from rmsearch.engine import CoreRepulsion
    from rmsearch.protocol import RelaxSettings

    data = dict(data)
    known = {f.name for f in dataclasses.fields(RelaxSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RMError(f"config.json: relax settings {unknown} unknown to this rmsearch version; "
                      "use the version that created the run directory")
    core = data.get("core_repulsion")
    if isinstance(core, dict):
        data["core_repulsion"] = CoreRepulsion(**core)
    return RelaxSettings(**data)


def read_config(rundir: str | os.PathLike, required: tuple[str, ...] = REQUIRED_FIELDS) -> dict[str, Any]:
    """The ``config.json`` of a run directory; RMError when it is missing, unreadable or
    lacks one of the ``required`` fields."""
    path = Path(rundir) / "config.json"
    if not path.is_file():
        raise RMError(f"{rundir}: not a run directory (no config.json); create it with 'rmsearch launch'")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RMError(f"{path}: unreadable run configuration ({exc}); restore it or start a new "
                      "run directory") from exc
    if not isinstance(config, dict):
        raise RMError(f"{path}: not a run configuration (a JSON object); start a new run directory")
    for key in required:
        if key not in config:
            raise RMError(f"{path}: field {key!r} missing; start a new run directory")
    return config


def build_config(*, potential: str | os.PathLike, nruns: int, relax: dict[str, Any] | None = None,
                 **options: Any) -> dict[str, Any]:
    """The ``config.json`` content of a new search (validated; nothing is written).

    potential: potential directory (``rmsearch export``). nruns: number of runs (ids
    0..nruns-1). ``options``: the fields of :class:`rmsearch.options.SearchOptions` (seed,
    one of system/composition/molecule, start and relaxation options, run_timeout_s);
    left out, their defaults. ``relax`` overrides any RelaxSettings field, also those that
    are no search option. An unknown option is a TypeError.
    """
    from rmsearch.engine import core_sections
    from rmsearch.potentials import load_potential
    from rmsearch.relax import RelaxSettings

    opts = SearchOptions(**options)
    if not isinstance(nruns, int) or nruns < 1:
        raise RMError(f"--nruns {nruns!r}: must be a positive integer")
    if not isinstance(opts.seed, int) or opts.seed < 0:
        raise RMError(f"{option_flag('seed')} {opts.seed!r}: must be an integer >= 0")
    potdir = Path(potential).resolve()
    pot = load_potential(potdir)
    spec = make_spec(**{k: getattr(opts, k) for k in KIND_OPTIONS + START_OPTIONS}, volumes=pot.volumes)
    unknown = [el for el in spec.elements if el not in pot.elements]
    if unknown:
        raise RMError(f"{potdir}: the potential knows {pot.elements}, not {unknown}; "
                      "search only elements it was trained on")
    timeout = opts.run_timeout_s
    if not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise RMError(f"{option_flag('run_timeout_s')} {timeout!r}: must be a number of seconds >= 0 "
                      "(0 = no limit)")
    if opts.keep_symmetry and spec.spacegroup is None:
        raise RMError(f"{option_flag('keep_symmetry')}: applies to space-group starts; give "
                      f"{option_flag('spacegroup')} N (or random)")
    settings = RelaxSettings(**{k: getattr(opts, k) for k in RELAX_OPTIONS})
    if relax:
        settings = relax_settings_from_dict({**relax_settings_to_dict(settings), **relax})
    if settings.core_repulsion is not None:  # a per-pair overlay too large for the potential: refused now
        core_sections(settings.core_repulsion, pot.elements)
    top = {f.metadata["config"]: float(getattr(opts, f.name)) if isinstance(f.default, float)
           else getattr(opts, f.name) for f in FIELDS if f.name in TOP_LEVEL_OPTIONS}
    config = {
        "format": CONFIG_FORMAT,
        "nruns": nruns,
        **{k: v for k, v in top.items() if k not in EXECUTION_KEYS},
        "start": spec.to_dict(),
        "potential": str(potdir),
        "potential_sha256": potential_fingerprint(potdir),
        "relax": relax_settings_to_dict(settings),
        **{k: v for k, v in top.items() if k in EXECUTION_KEYS},
    }
    config["provenance"] = provenance({k: v for k, v in config.items() if k not in ("nruns", *EXECUTION_KEYS)},
                                      opts.seed)
    return config


def options_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """:func:`build_config` keyword arguments that reproduce a stored configuration: every
    search option from its place in config.json (its default where an older file lacks
    it), the relaxation options as ``relax``: the whole stored table (fields set through the
    library, such as ``core_repulsion``, included)."""
    out = {name: stored_option(config, name) for name in OPTION_NAMES if name not in RELAX_OPTIONS}
    out["relax"] = dict(config["relax"])
    return out


def stored_option(config: dict[str, Any], name: str) -> Any:
    """The value of search option ``name`` in a stored configuration, read from its place in
    config.json (lists as tuples); its default where an older file lacks it."""
    field = option_field(name)
    value: Any = config
    for part in field.metadata["config"].split("."):
        value = value.get(part, field.default) if isinstance(value, dict) else field.default
    return tuple(value) if isinstance(value, list) else value


def init_rundir(rundir: str | os.PathLike, config: dict[str, Any]) -> dict[str, Any]:
    """Create ``rundir`` for ``config`` (from :func:`build_config`), or check it against the
    existing one and return the configuration to use.

    An existing run directory must agree on every field in
    :data:`rmsearch.options.RESULT_KEYS` (seed, starts, relaxation settings, potential
    contents); otherwise RMError names the field. The fields in
    :data:`rmsearch.options.RESUMABLE_KEYS` may change and are stored anew: ``nruns`` may
    grow (more runs extend the search), a moved potential directory with the same contents
    is accepted, execution settings such as ``run_timeout_s`` are replaced.
    """
    rundir = Path(rundir)
    path = rundir / "config.json"
    (rundir / "shards").mkdir(parents=True, exist_ok=True)
    (rundir / "slurm").mkdir(exist_ok=True)
    if not path.exists():
        write_json_atomic(path, config)
        log.info("%s: new search, %d runs", rundir, config["nruns"])
        return config
    old = read_config(rundir)
    # normalise the stored settings (fields added by a later version take their defaults)
    old["relax"] = relax_settings_to_dict(relax_settings_from_dict(old["relax"]))
    old["start"] = StartSpec.from_dict(old["start"]).to_dict()
    for key in RESULT_KEYS:
        if old.get(key) != config.get(key):
            raise RMError(f"{path}: the existing search has a different {key!r} "
                          f"({_short(old.get(key))} vs {_short(config.get(key))}); resume with the "
                          "same options or use a new -o directory")
    if int(config["nruns"]) < int(old["nruns"]):
        raise RMError(f"{path}: the existing search has {old['nruns']} runs, not {config['nruns']}; nruns "
                      "may grow on resume, never shrink")
    changed = {k: config[k] for k in RESUMABLE_KEYS if old.get(k) != config[k]}
    if changed:
        log.info("%s: updating %s in config.json", rundir, changed)
        old.update(changed)
        write_json_atomic(path, old)
    return old


def _short(value: Any, n: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


def prepare_config(rundir: str | os.PathLike, *, potential: str | os.PathLike | None = None,
                   nruns: int | None = None, **options: Any) -> dict[str, Any]:
    """The configuration a launch on ``rundir`` with these options would use (nothing written).

    New run directory: ``potential`` and ``nruns`` are required and ``options`` go to
    :func:`build_config`. Existing one: options left out (None) keep their stored values,
    given ones replace them (giving one of system/composition/molecule replaces the
    stored one); :func:`init_rundir` then checks that nothing that changes results differs.
    """
    rundir = Path(rundir)
    options = {k: v for k, v in options.items() if v is not None}
    if not (rundir / "config.json").exists():
        if potential is None or nruns is None:
            raise RMError(f"{rundir}: new run directory; --potential and --nruns are required")
        return build_config(potential=potential, nruns=nruns, **options)
    old = read_config(rundir)
    if nruns is not None and nruns < int(old["nruns"]):
        raise RMError(f"--nruns {nruns}: {rundir} holds a search of {old['nruns']} runs; nruns may grow on "
                      f"resume, never shrink (leave --nruns out to resume all {old['nruns']})")
    if potential is None and not Path(old["potential"]).is_dir():
        raise RMError(f"{rundir}/config.json: potential directory {old['potential']} no longer "
                      "exists; pass --potential with its new location (same contents)")
    merged = options_from_config(old)
    if any(k in options for k in KIND_OPTIONS):
        for k in KIND_OPTIONS:
            merged.pop(k)
    merged["relax"].update({k: options.pop(k) for k in RELAX_OPTIONS if k in options})
    merged.update(options)
    return build_config(potential=potential or old["potential"], nruns=nruns or old["nruns"], **merged)
