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
