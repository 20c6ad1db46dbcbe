"""Shared fixtures: a response-matched diamond dataset and a tiny MACE model trained on it.

The model is trained once per test session with the real ``mace_run_train`` command that
``rmdata mace-command`` prints (smaller and shorter), so tests downstream of rmdata use
the same pipeline a user runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the dataset cache of the test session out of the user's home directory."""
    old = os.environ.get("RMDATA_CACHE")
    os.environ["RMDATA_CACHE"] = str(tmp_path_factory.mktemp("rmdata_cache"))
    yield
    if old is None:
        os.environ.pop("RMDATA_CACHE", None)
    else:
        os.environ["RMDATA_CACHE"] = old


#: Training recipe of the session model: the quick diamond workflow's (workflows/diamond.py),
#: so that the tests and the quick workflow run share one trained model.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflows"))
from diamond import SIZES  # noqa: E402

DIAMOND_COPIES, DIAMOND_MODEL_EPOCHS, DIAMOND_MODEL_CHANNELS, _ = SIZES["quick"]


@pytest.fixture(scope="session")
def diamond_dataset(tmp_path_factory) -> Path:
    """An rmdata extxyz of the diamond preset (2 x 121 frames, seed 0), as the workflow makes it."""
    from rmdata.make import make_dataset

    out = tmp_path_factory.mktemp("diamond_data") / "diamond.xyz"
    make_dataset(out, "diamond", seed=0, workers=1, copies=DIAMOND_COPIES)
    return out


@pytest.fixture(scope="session")
def diamond_training(diamond_dataset, tmp_path_factory) -> dict:
    """Train a tiny one-layer MACE on the diamond set; returns paths and the training log."""
    from rmdata.errors import RMError
    from rmdata.mace import train

    workdir = tmp_path_factory.mktemp("diamond_model")
    try:
        model, log = train(diamond_dataset, workdir, name="diamond", epochs=DIAMOND_MODEL_EPOCHS,
                           channels=DIAMOND_MODEL_CHANNELS, seed=0, timeout_s=900)
    except RMError as exc:
        pytest.fail(f"mace_run_train failed: {exc}")
    return {"model": model, "workdir": workdir, "log": log, "dataset": diamond_dataset}


@pytest.fixture(scope="session")
def diamond_model(diamond_training) -> Path:
    """Path of a MACE model (``.model``) trained on the diamond response labels."""
    return diamond_training["model"]


@pytest.fixture(scope="session")
def lj_potential(tmp_path_factory) -> Path:
    """A cheap Li-S potential directory: LAMMPS' native lj/cut (eps 0.05 eV, sigma 2.2 A).

    For tests of orchestration (runner, SLURM, faults) where the physics does not matter.
    """
    import json

    d = tmp_path_factory.mktemp("ljpot")
    meta = {"backend": "lj", "elements": ["Li", "S"], "cutoff": 5.0, "pair_style": "lj/cut 5.0",
            "pair_coeff": ["* * 0.05 2.2"], "callback": None, "volumes": {"Li": 14.0, "S": 14.0}}
    (d / "potential.json").write_text(json.dumps(meta))
    return d
