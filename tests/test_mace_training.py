"""A real mace_run_train run on an rmdata file reads REF_forces and REF_stress and learns."""

from __future__ import annotations

import re


def _losses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"Epoch \d+: .*?loss=([0-9.eE+-]+)", log)]


def test_mace_trains_on_forces_and_stress(diamond_training):
    log = diamond_training["log"]
    # MACE saw both labels: it reports force and stress errors on the validation set
    assert re.search(r"RMSE_F=\s*[0-9.]+ meV / A", log)
    assert re.search(r"RMSE_stress=\s*[0-9.]+ meV / A\^3", log)
    initial = float(re.search(r"Initial: .*?loss=([0-9.eE+-]+)", log).group(1))
    losses = _losses(log)
    assert len(losses) >= 5
    # the validation loss falls clearly below its initial value
    assert min(losses) < 0.8 * initial, (initial, losses)
    assert diamond_training["model"].stat().st_size > 10_000
