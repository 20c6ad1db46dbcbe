"""A real mace_run_train run on an rmdata file reads REF_forces and REF_stress and learns.

A small run of its own (one 121-frame diamond set, 16 channels, 6 epochs; well under a
minute on one core), with the command ``rmdata mace-command`` prints.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from rmdata.mace import mace_command
from rmdata.make import make_dataset


def _losses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"Epoch \d+: .*?loss=([0-9.eE+-]+)", log)]


def test_mace_trains_on_forces_and_stress(tmp_path):
    data = tmp_path / "diamond.xyz"
    make_dataset(data, "diamond", seed=0)
    (line,) = mace_command(data, name="small", epochs=6, channels=16, seed=0)
    args = shlex.split(line)
    args[0] = str(Path(sys.executable).parent / args[0])
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # MACE saw both labels: it reports force and stress errors on the validation set
    assert re.search(r"RMSE_F=\s*[0-9.]+ meV / A", log)
    assert re.search(r"RMSE_stress=\s*[0-9.]+ meV / A\^3", log)
    initial = float(re.search(r"Initial: .*?loss=([0-9.eE+-]+)", log).group(1))
    losses = _losses(log)
    assert len(losses) == 6
    # the validation loss falls clearly below its initial value
    assert min(losses) < 0.8 * initial, (initial, losses)
    assert (tmp_path / "small.model").stat().st_size > 10_000


def test_mlp_readout_trains_and_evaluates_like_any_mace_model(tmp_path, monkeypatch):
    """``--readout mlp``: rmdata-mace-train gives the one-layer model MACE's nonlinear
    readout; the saved model scripts, and its forces are minus the gradient of its energy."""
    import numpy as np
    import torch
    from ase.build import bulk
    from mace.modules.blocks import NonLinearReadoutBlock

    from rmdata.mace import train
    from rmsearch.mace_model import MACEEvaluator

    data = tmp_path / "diamond.xyz"
    make_dataset(data, "diamond", seed=0)
    # as in a fresh shell: importing mace in this process set it
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    model, log = train(data, tmp_path / "t", name="nl", epochs=2, channels=8, seed=0, readout="mlp",
                       readout_width=4)
    assert "rmdata-mace-train" in mace_command(data, readout="mlp")[0]
    net = torch.load(model, map_location="cpu", weights_only=False)
    assert isinstance(net.readouts[0], NonLinearReadoutBlock) and len(net.interactions) == 1
    assert net.readouts[0].linear_1.irreps_out.dim == 4  # --readout-width hidden units
    scripted = MACEEvaluator(model, dtype="float64", script=True)
    eager = MACEEvaluator(model, dtype="float64", script=False)
    assert isinstance(scripted.model, torch.jit.ScriptModule)
    atoms = bulk("C", "diamond", a=3.57)
    atoms.rattle(0.1, seed=2)
    e, f, _ = scripted.evaluate(atoms.positions, atoms.cell.array, atoms.numbers)
    e2, f2, _ = eager.evaluate(atoms.positions, atoms.cell.array, atoms.numbers)
    assert abs(e - e2) < 1e-9 and np.allclose(f, f2, atol=1e-9)
    h = 1e-4
    for i, k in [(0, 0), (1, 2)]:
        pos = atoms.positions.copy()
        pos[i, k] += h
        ep = scripted.evaluate(pos, atoms.cell.array, atoms.numbers)[0]
        pos[i, k] -= 2 * h
        em = scripted.evaluate(pos, atoms.cell.array, atoms.numbers)[0]
        assert abs(-(ep - em) / (2 * h) - f[i, k]) < 1e-5 * max(1.0, abs(f[i, k]))
