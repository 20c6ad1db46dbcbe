"""``rmdata info`` and ``rmdata convert``: look inside and convert dataset files."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from rmdata.io import FrameBatch, open_writer, read, read_provenance, require_labels


def summarize(path: str | os.PathLike) -> str:
    """A human-readable summary of an rmdata file."""
    frames = read(path)
    require_labels(frames, path)
    prov = read_provenance(path)
    n_atoms = np.array([len(a) for a in frames])
    symbols = Counter()
    for a in frames:
        symbols.update(a.get_chemical_symbols())
    forces = np.concatenate([a.arrays["REF_forces"] for a in frames])
    fnorm = np.linalg.norm(forces, axis=1)
    stress = [a.info["REF_stress"] for a in frames if "REF_stress" in a.info]
    sources = {a.info.get("source_id") for a in frames}
    lines = [
        f"file:        {path}",
        f"frames:      {len(frames)} from {len(sources)} reference structure(s)",
        f"atoms:       {int(n_atoms.sum())} total, {n_atoms.min()}-{n_atoms.max()} per frame",
        f"elements:    {', '.join(f'{s} {n}' for s, n in sorted(symbols.items()))}",
        f"|REF_forces| (eV/A): mean {fnorm.mean():.4f}, max {fnorm.max():.4f}",
    ]
    if stress:
        s = np.array(stress)
        lines.append(f"REF_stress (eV/A^3): {len(stress)} frames, max |component| {np.abs(s).max():.4f}")
    else:
        lines.append("REF_stress:  none (non-periodic)")
    if prov:
        cfg = prov.get("config", {})
        lines.append(f"provenance:  rmdata {prov.get('version')} (git {str(prov.get('git_commit'))[:10]}), "
                     f"seed {prov.get('seed')}, config {prov.get('config_hash')}")
        lines.append(f"source:      {json.dumps(cfg.get('source'))}")
        for kind, preset in (cfg.get("presets") or {}).items():
            lines.append(f"preset {kind}: {preset.get('name')} noise={json.dumps(preset.get('noise'))} "
                         f"labels={json.dumps(preset.get('labels'))}")
    return "\n".join(lines)


def convert(source: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Copy a dataset into another format (extxyz <-> HDF5), keeping provenance; return frames."""
    frames = read(source)
    require_labels(frames, source)
    prov = read_provenance(source)
    prov = {**prov, "converted_from": str(Path(source).name)}
    with open_writer(dest, prov) as writer:
        for a in frames:
            stress = a.info.get("REF_stress")
            writer.write(FrameBatch(
                a.numbers, a.positions[None], np.asarray(a.cell)[None], a.pbc, a.arrays["REF_forces"][None],
                None if stress is None else np.asarray(stress).reshape(1, 3, 3),
                np.array([a.info.get("REF_pseudo_energy", np.nan)]), np.array([a.info.get("noise_level", 0.0)]),
                np.array([a.info.get("strain", 0.0)]), a.info.get("config_type", ""),
                a.info.get("source_id", "")))
    return len(frames)
