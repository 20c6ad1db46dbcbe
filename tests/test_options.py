"""Search options declared once (rmsearch.options.SearchOptions): the launch command line,
config.json and the resume rules derive from it, and run directories written before it
still resume."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rmdata.errors import RMError
from rmsearch.cli_launch import launch_cmd
from rmsearch.config import build_config, init_rundir, options_from_config, potential_fingerprint, prepare_config
from rmsearch.options import (
    FIELDS,
    RELAX_OPTIONS,
    RESULT_KEYS,
    RESUMABLE_KEYS,
    SearchOptions,
    cli_help,
    option_flag,
    parse_cli_values,
)
from rmsearch.relax import RelaxSettings
from rmsearch.starts import StartSpec

#: config.json of a composition search as rmsearch wrote it before SearchOptions existed
#: (commit 0e0217d; provenance left out, potential path and fingerprint set by the test).
OLD_CONFIG = {
    "format": 1, "nruns": 10, "seed": 7, "system": None, "composition": "Li2S", "molecule": None,
    "start": {"mode": "composition", "elements": ["Li", "S"], "formula": "Li2S", "natoms": [4, 8],
              "volumes": {"Li": 14.0, "S": 14.0}, "volume_factor": [0.8, 1.2], "minsep_factor": 0.7,
              "minsep_floor": 0.7, "max_length_ratio": 2.0, "max_tilt": 0.35, "spacegroup": "random",
              "box": [10.0, 5.0, 5.0]},
    "potential": None, "potential_sha256": None,
    "relax": {"dt": 0.1, "dt_max": 1.0, "max_step": 0.3, "n_min": 10, "f_inc": 1.1, "f_dec": 0.5,
              "a_start": 0.25, "f_a": 0.99, "fmax": 0.02, "smax_gpa": 0.1, "max_steps": 2000,
              "relax_cell": True, "pressure_gpa": 0.0, "dtype": "float32",
              "core_repulsion": {"m": 1.0, "rc": 0.75}, "optimizer": "auto", "switch_fmax": 2.0,
              "memory": 20, "alpha": 70.0, "max_volume_factor": 10.0, "max_volume_per_atom": 200.0,
              "min_volume_per_atom": 1.0, "kick": 0.0, "kick_fmax": 0.0002, "keep_symmetry": True,
              "release_symmetry": True, "symprec": 0.0001},
    "run_timeout_s": 600.0,
}


def test_every_search_option_is_a_launch_option_with_its_help():
    params = {p.name: p for p in launch_cmd.params}
    given = launch_cmd.make_context("launch", ["-o", "run"]).params
    for field in FIELDS:
        param = params[field.name]
        assert param.opts[0] == option_flag(field.name)
        assert param.help == cli_help(field)
        assert given[field.name] is None  # not given: a resume keeps the stored value
        if field.metadata["click_type"] is not None:
            assert param.type is field.metadata["click_type"]


def test_defaults_are_the_engines_defaults():
    for name in RELAX_OPTIONS:
        assert getattr(SearchOptions(), name) == getattr(RelaxSettings(), name), name
    spec = StartSpec(mode="system", elements=("Li",), volumes={"Li": 20.0})
    for name in ("natoms", "volume_factor", "minsep_factor", "spacegroup"):
        assert getattr(SearchOptions(), name) == getattr(spec, name), name
    assert "``--smax``" in SearchOptions.__doc__ and "``relax.fmax``" in SearchOptions.__doc__


def test_resume_rules_derive_from_the_fields():
    assert RESULT_KEYS == ("seed", "start", "relax", "potential_sha256")
    assert RESUMABLE_KEYS == ("nruns", "potential", "run_timeout_s")
    assert parse_cli_values({"volume_factor": "0.9-1.1", "fmax": None, "workers": 3}) == \
        {"volume_factor": (0.9, 1.1), "fmax": None}


def test_build_config_refuses_an_unknown_option(lj_potential):
    with pytest.raises(TypeError, match="frobnicate"):
        build_config(potential=lj_potential, nruns=2, system="Li-S", frobnicate=1)


def test_config_round_trips_through_the_options(lj_potential):
    from rmsearch.engine import CoreRepulsion

    config = build_config(potential=lj_potential, nruns=5, composition="Li2S", natoms="4-8", seed=3,
                          spacegroup=12, fmax=0.03, run_timeout_s=20, relax={"pressure_gpa": 1.5},
                          core_repulsion=CoreRepulsion.parse("m=10,scale=0.7"))
    again = build_config(potential=lj_potential, nruns=5, **options_from_config(config))
    assert {k: v for k, v in again.items() if k != "provenance"} == \
        {k: v for k, v in config.items() if k != "provenance"}
    assert config["relax"]["pressure_gpa"] == 1.5 and config["run_timeout_s"] == 20.0
    assert config["relax"]["core_repulsion"] == {"m": 10.0, "rc": 0.75, "covalent_scale": 0.7, "zbl": False}


@pytest.mark.parametrize("older", [False, True])
def test_a_run_directory_from_before_resumes(lj_potential, tmp_path, older):
    """A config.json written before the options were declared once resumes with no options,
    takes a new run timeout, and still refuses a changed tolerance."""
    old = json.loads(json.dumps(OLD_CONFIG))
    old.update(potential=str(lj_potential), potential_sha256=potential_fingerprint(lj_potential))
    if older:  # a still older file: no run timeout, no symmetry settings
        del old["run_timeout_s"]
        old["start"]["spacegroup"] = None
        for key in ("keep_symmetry", "release_symmetry", "symprec"):
            del old["relax"][key]
    rundir = tmp_path / "run"
    rundir.mkdir()
    (rundir / "config.json").write_text(json.dumps(old))
    config = init_rundir(rundir, prepare_config(rundir))
    assert config["seed"] == 7 and config["composition"] == "Li2S" and config["relax"]["fmax"] == 0.02
    if older:  # the run timeout is stored from now on, with its default
        assert json.loads((rundir / "config.json").read_text())["run_timeout_s"] == 600.0
    else:
        assert (rundir / "config.json").read_text() == json.dumps(old)  # nothing to update
    config = init_rundir(rundir, prepare_config(rundir, run_timeout_s=5.0, nruns=12, fmax=0.02))
    assert config["run_timeout_s"] == 5.0 and config["nruns"] == 12
    with pytest.raises(RMError, match="different 'relax'"):
        init_rundir(rundir, prepare_config(rundir, fmax=0.05))
    with pytest.raises(RMError, match="different 'start'"):
        init_rundir(rundir, prepare_config(rundir, natoms="4-10"))
    from rmsearch.engine import CoreRepulsion

    with pytest.raises(RMError, match="different 'relax'"):  # the overlay changes results
        init_rundir(rundir, prepare_config(rundir, core_repulsion=CoreRepulsion(m=1.0, rc=0.75, covalent_scale=0.7)))


def test_search_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SearchOptions().seed = 1  # type: ignore[misc]
