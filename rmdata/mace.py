"""The ``mace_run_train`` command for an rmdata file (DESIGN §3).

MACE trains on forces and stress alone: ``--energy_weight=0``, label keys
``REF_forces``/``REF_stress``, one interaction layer (no message passing), E0s of zero
for every element of the file, and the cutoff of the file's preset. MACE warns that no
energies were found, then trains.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np

from rmdata.errors import RMError
from rmdata.io import format_for, read_provenance
from rmdata.presets import PRESETS


def dataset_elements(path: str | os.PathLike) -> tuple[list[int], bool]:
    """Atomic numbers present in an rmdata file, and whether it has stress labels."""
    from rmdata.io import read, require_labels

    path = Path(path)
    frames = read(path)  # one-line RMError for a missing, empty or unreadable file
    require_labels(frames, path)
    numbers = sorted({int(z) for atoms in frames for z in np.unique(atoms.numbers)})
    has_stress = any("REF_stress" in atoms.info for atoms in frames)
    return numbers, has_stress


#: Hyper-parameters of :func:`mace_command` beyond the preset (None = MACE's default is not passed).
#: Each maps to one ``mace_run_train`` flag; units: ``r_max`` in A, ``lr`` per step.
TRAINING_OPTIONS = ("max_L", "correlation", "batch_size", "lr", "lr_gamma", "ema_decay",
                    "forces_weight", "stress_weight", "eval_interval")


#: Readout of the one-layer model -> the training command (same flags).
READOUTS = {"linear": "mace_run_train", "mlp": "rmdata-mace-train"}


def mace_command(path: str | os.PathLike, name: str | None = None, epochs: int | None = None,
                 r_max: float | None = None, channels: int | None = None, device: str = "cpu",
                 seed: int = 0, valid_fraction: float = 0.1, dtype: str | None = None,
                 max_L: int | None = None, correlation: int | None = None,
                 batch_size: int | None = None, lr: float | None = None,
                 lr_gamma: float | None = None, ema_decay: float | None = None,
                 forces_weight: float | None = None, stress_weight: float | None = None,
                 eval_interval: int | None = None, restart: bool = False,
                 readout: str = "linear", readout_width: int | None = None) -> list[str]:
    """The lines of a shell script that trains MACE on ``path`` (converting HDF5 first).

    Args:
        path: an rmdata extxyz or HDF5 file.
        name: model name (default: the file's stem).
        epochs: maximum epochs (default: the preset's).
        r_max: cutoff (A) (default: the preset's).
        channels: MACE channels (default: the preset's).
        device: ``cpu`` or ``cuda``; ``cuda`` defaults to float32 and a 4x larger batch.
        seed: training seed.
        valid_fraction: share of frames held out for validation.
        dtype: ``float64`` or ``float32`` (default: float64 on CPU, float32 on CUDA).
        max_L: highest L of the messages (default: the preset's, 1).
        correlation: body order of the product basis minus one (MACE's default, 3, if None).
        batch_size: frames per batch (default: the preset's, 8).
        lr: initial learning rate (default: the preset's, 0.01).
        lr_gamma: if given, an exponential learning-rate decay per epoch
            (``--scheduler=ExponentialLR --lr_scheduler_gamma``) instead of MACE's
            plateau scheduler.
        ema_decay: if given, train with an exponential moving average of the weights.
        forces_weight, stress_weight: loss weights (default: the preset's, 10 and 100).
        eval_interval: epochs between validations and checkpoints (MACE's default, 1).
        restart: resume from the newest checkpoint in ``checkpoints/`` if there is one
            (``--restart_latest``), so an interrupted training continues.
        readout: ``linear`` (MACE's readout of a one-layer model) or ``mlp``: MACE's
            nonlinear readout block (16 hidden scalars, silu), trained by
            ``rmdata-mace-train`` (:mod:`rmdata.mace_train`) with the same flags.
        readout_width: hidden scalars of the ``mlp`` readout (default 16, MACE's).
    """
    if readout not in READOUTS:
        raise RMError(f"--readout {readout}: choose one of {', '.join(READOUTS)}")
    if readout_width is not None and readout != "mlp":
        raise RMError(f"--readout-width {readout_width}: only the mlp readout has hidden units; add --readout mlp")
    path = Path(path)
    prov = read_provenance(path)
    presets = prov.get("config", {}).get("presets", {})
    crystal_preset = presets.get("crystal", {}).get("name", "crystal")
    mace = dict(PRESETS.get(crystal_preset, PRESETS["crystal"]).mace)
    numbers, has_stress = dataset_elements(path)
    if not has_stress:
        mace = dict(PRESETS["molecule"].mace)
    lines = []
    train_file = path
    if format_for(path) == "hdf5":
        train_file = path.with_suffix(".xyz")
        lines.append(f"rmdata convert {shlex.quote(str(path))} {shlex.quote(str(train_file))}")
    e0s = json.dumps({z: 0.0 for z in numbers}).replace('"', "")
    if dtype is None:
        dtype = "float32" if device == "cuda" else "float64"
    if batch_size is None:
        batch_size = mace["batch_size"] * (4 if device == "cuda" else 1)
    args = [
        READOUTS[readout],
        f"--name={name or path.stem}",
        f"--train_file={train_file}",
        f"--valid_fraction={valid_fraction}",
        "--model=MACE",
        "--num_interactions=1",
        f"--num_channels={channels or mace['num_channels']}",
        f"--max_L={mace['max_L'] if max_L is None else max_L}",
    ]
    if correlation is not None:
        args.append(f"--correlation={correlation}")
    args += [
        f"--r_max={r_max or mace['r_max']}",
        f"--E0s={e0s}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--energy_weight=0",
        f"--forces_weight={mace['forces_weight'] if forces_weight is None else forces_weight}",
        f"--batch_size={batch_size}",
        f"--max_num_epochs={epochs or mace['max_num_epochs']}",
        f"--lr={mace['lr'] if lr is None else lr}",
    ]
    if readout == "mlp":
        args.append(f"--MLP_irreps={readout_width or 16}x0e")
    if lr_gamma is not None:
        args += ["--scheduler=ExponentialLR", f"--lr_scheduler_gamma={lr_gamma}"]
    if ema_decay is not None:
        args += ["--ema", f"--ema_decay={ema_decay}"]
    if eval_interval is not None:
        args.append(f"--eval_interval={eval_interval}")
    if restart:
        args.append("--restart_latest")
    args += [
        f"--default_dtype={dtype}",
        f"--device={device}",
        f"--seed={seed}",
    ]
    if has_stress:
        sw = mace["stress_weight"] if stress_weight is None else stress_weight
        args += ["--loss=stress", "--stress_key=REF_stress", f"--stress_weight={sw}",
                 "--compute_stress=True"]
    else:
        args += ["--loss=weighted"]
    lines.append(" ".join(shlex.quote(a) for a in args))
    return lines


def check_training_options(**options) -> None:
    """Raise a one-line error naming the first option that is not a usable value.

    Counts (``epochs``, ``channels``, ``batch_size``, ``eval_interval``, ``readout_width``)
    must be >= 1,
    ``max_L``, ``correlation`` and ``seed`` >= 0 (correlation >= 1), real numbers finite and
    positive (``lr``, ``r_max``, weights), ``lr_gamma`` in (0, 1] and ``ema_decay`` in (0, 1).
    """
    import math

    def bad(name: str, why: str):
        return RMError(f"--{name.replace('_', '-')} {options[name]}: {why}")

    for name in ("epochs", "channels", "batch_size", "eval_interval", "readout_width"):
        if options.get(name) is not None and options[name] < 1:
            raise bad(name, "must be >= 1")
    for name, low in (("max_L", 0), ("correlation", 1), ("seed", 0)):
        if options.get(name) is not None and options[name] < low:
            raise bad(name, f"must be >= {low}")
    for name in ("lr", "r_max", "forces_weight", "stress_weight", "lr_gamma", "ema_decay"):
        value = options.get(name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise bad(name, "must be a finite number > 0")
    if options.get("lr_gamma") is not None and options["lr_gamma"] > 1:
        raise bad("lr_gamma", "must be <= 1 (a decay factor per epoch)")
    if options.get("ema_decay") is not None and options["ema_decay"] >= 1:
        raise bad("ema_decay", "must be < 1")


def check_training_file(path: str | os.PathLike) -> None:
    """Raise a one-line error unless ``path`` is an rmdata file."""
    if not Path(path).exists():
        raise RMError(f"{path}: no such file")


def train(path: str | os.PathLike, workdir: str | os.PathLike, *, name: str = "model",
          timeout_s: float | None = None, **options) -> tuple[Path, str]:
    """Train MACE on ``path`` in ``workdir`` with the command of :func:`mace_command`.

    ``options`` go to :func:`mace_command` (epochs, channels, seed, ...). Console scripts
    are taken from this Python's environment, and every process runs one thread (faster on
    CPU, see the README). Returns ``(workdir/<name>.model, training log)``; a failed run
    raises :class:`RMError` with the end of the log.
    """
    import subprocess
    import sys

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = []
    for line in mace_command(Path(path).resolve(), name=name, **options):
        args = shlex.split(line)
        local = Path(sys.executable).parent / args[0]
        if local.exists():
            args[0] = str(local)
        proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True, env=env,
                              timeout=timeout_s, check=False)
        log.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RMError(f"{args[0]} failed (exit {proc.returncode}) in {workdir}: "
                          + " | ".join(log[-1].strip().splitlines()[-3:]))
    model = workdir / f"{name}.model"
    if not model.exists():
        raise RMError(f"{workdir}: training finished without writing {model.name}")
    return model, "".join(log)
