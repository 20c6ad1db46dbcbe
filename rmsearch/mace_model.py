"""A lean MACE evaluator for structure search: energy, forces and stress of one structure.

Why not ``mace.calculators.MACECalculator``: the calculator builds a torch_geometric
``AtomicData`` through ``Configuration`` objects and a data loader for every call, which
costs about as much as the model itself for 8-atom cells. Here one call is a vesin
neighbour list, a one-hot node attribute table and a direct ``model(...)`` call with
``compute_stress=True`` (the model's own autograd gives forces and stress), nothing else.

Units: positions and cell in A, energy in eV, forces in eV/A, stress in eV/A^3 with the
ASE sign (positive = tensile), as a 3x3 matrix.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from rmdata.errors import RMError

log = logging.getLogger(__name__)

DTYPES = ("float64", "float32")


def load_mace_model(path: str | os.PathLike, dtype: str = "float64"):
    """Load a model written by ``mace_run_train`` (a pickled ``torch.nn.Module``) for CPU inference.

    ``torch.load(weights_only=True)`` is tried first; the full-module files that
    ``mace_run_train`` writes need the pickle loader, which is then used (only load model
    files you trust). The model is put in eval mode with gradients of its parameters off,
    converted to ``dtype`` ("float64" or "float32").
    """
    import torch

    if dtype not in DTYPES:
        raise RMError(f"model dtype {dtype!r}: must be one of {', '.join(DTYPES)}")
    path = Path(path)
    if not path.is_file():
        raise RMError(f"{path}: model file not found; give the .model file written by mace_run_train")
    if path.stat().st_size == 0:
        raise RMError(f"{path}: the model file is empty; give the .model file written by mace_run_train")
    try:
        model = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure here: try the full pickle loader below
        log.debug("%s: not loadable with weights_only=True (a full pickled module); "
                  "using the pickle loader", path)
        try:
            model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # any unpickling failure means an unusable file
            raise RMError(f"{path}: cannot load as a MACE model ({type(exc).__name__}: {exc}); "
                          "give the .model file written by mace_run_train") from exc
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "atomic_numbers") \
            or not hasattr(model, "r_max"):
        raise RMError(f"{path}: not a MACE model (no atomic_numbers/r_max); give the .model file "
                      "written by mace_run_train")
    model = model.to(dtype=getattr(torch, dtype)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class MACEEvaluator:
    """Energy, forces and stress from a MACE model: one structure per call (:meth:`evaluate`,
    the LAMMPS callback's) or many (:meth:`evaluate_batch`, the batched relaxer's).

    ``dtype="float32"`` runs the model in single precision (faster, for search);
    ``"float64"`` reproduces ``MACECalculator`` to round-off. ``threads`` pins torch's
    intra-op threads (1 per worker process is fastest for small cells). ``script`` compiles
    the model with TorchScript (0.3 s once; 8.5 instead of 10.2 ms per call on 8 carbon atoms
    in float32, 12.3 instead of 14.9 ms in float64), run without the graph executor's
    re-optimisation, so every call gives the eager model's numbers bit for bit whatever
    was evaluated before it (one source of worker-count dependence; README, "Same seed, same
    records", lists the others removed); a model that
    TorchScript rejects runs as it is. ``device``: a torch device ("cpu", "cuda",
    "cuda:1"); inputs and results are numpy arrays on the host either way.
    ``model_time_s`` accumulates the wall time spent in :meth:`evaluate` and
    :meth:`evaluate_batch` (neighbour lists and host-device copies included).
    """

    def __init__(self, model_path: str | os.PathLike, dtype: str = "float64", threads: int | None = 1,
                 script: bool = True, device: str = "cpu"):
        import torch
        from vesin import NeighborList

        if threads is not None:
            torch.set_num_threads(threads)
        self._torch = torch
        self.dtype = dtype
        self._tdtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.model = load_mace_model(model_path, dtype).to(self.device)
        if script:
            from e3nn.util import jit  # scripts e3nn's own modules as MACE does (plain torch.jit.script
            # fails on e3nn's Activation, e.g. in MACE's nonlinear readout)

            try:
                with warnings.catch_warnings():  # TorchScript's notes on e3nn's annotations
                    warnings.simplefilter("ignore", UserWarning)
                    self.model = jit.compile(self.model)
            except Exception as exc:  # noqa: BLE001 - any scripting failure: stay eager
                log.warning("%s: TorchScript failed (%s); evaluating the model eagerly",
                            model_path, " ".join(str(exc).split())[:200])
        self.z_table = np.array([int(z) for z in self.model.atomic_numbers], dtype=int)
        self.cutoff = float(self.model.r_max)
        self._nl = NeighborList(cutoff=self.cutoff, full_list=True)
        self.model_time_s = 0.0
        self.n_calls = 0

    def node_attrs(self, numbers: np.ndarray) -> np.ndarray:
        """One-hot element table (n_atoms, n_elements); RMError for elements the model lacks."""
        numbers = np.asarray(numbers, dtype=int)
        idx = np.searchsorted(self.z_table, numbers)
        idx = np.clip(idx, 0, len(self.z_table) - 1)
        bad = self.z_table[idx] != numbers
        if bad.any():
            raise RMError(f"atomic number(s) {sorted(set(numbers[bad].tolist()))} not in the model "
                          f"(it knows {self.z_table.tolist()})")
        onehot = np.zeros((len(numbers), len(self.z_table)))
        onehot[np.arange(len(numbers)), idx] = 1.0
        return onehot

    def evaluate(self, positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray,
                 pbc: np.ndarray | bool = True, node_attrs: np.ndarray | None = None
                 ) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces (n_atoms, 3) in eV/A and stress (3, 3) in eV/A^3 (ASE sign).

        ``cell`` rows are lattice vectors (A). For a structure without periodicity the
        stress is returned as zeros. ``node_attrs`` may be passed to skip the element
        lookup when the same composition is evaluated repeatedly.
        """
        if node_attrs is None:
            node_attrs = self.node_attrs(numbers)
        return self.evaluate_batch([(positions, cell, node_attrs, pbc)])[0]

    def evaluate_batch(self, systems: list[tuple]) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Energy, forces and stress of several structures in one model call.

        ``systems``: ``(positions (n_i, 3) A, cell rows (3, 3) A, node_attrs (n_i,
        n_elements) from :meth:`node_attrs`, pbc)`` per structure. The structures are
        flattened into one graph batch (atoms concatenated, edges offset, a per-atom system
        index ``batch``, cells stacked as (3 n_systems, 3)), as ``mace.tools.torch_geometric``
        batches ``AtomicData``; the model returns per-system energies and stresses. Returns
        ``(energy eV, forces (n_i, 3) eV/A, stress (3, 3) eV/A^3)`` per structure, in order;
        stress is zeros for a structure without periodicity.
        """
        torch = self._torch
        t0 = time.perf_counter()
        pos_l, cells, attrs, edges, shifts, counts, periodic = [], [], [], [], [], [], []
        offset = 0
        for positions, cell, node_attrs, pbc in systems:
            positions = np.ascontiguousarray(positions, dtype=np.float64)
            cell = np.ascontiguousarray(cell, dtype=np.float64)
            pbc_arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
            is_periodic = bool(pbc_arr.any())
            i, j, shifts_int = self._nl.compute(points=positions,
                                                box=cell if is_periodic else np.zeros((3, 3)),
                                                periodic=pbc_arr.tolist() if is_periodic else False,
                                                quantities="ijS")
            pos_l.append(positions)
            cells.append(cell)
            attrs.append(node_attrs)
            edges.append(np.stack((i, j)).astype(np.int64) + offset)
            shifts.append(shifts_int)
            counts.append(len(positions))
            periodic.append(is_periodic)
            offset += len(positions)
        n_sys = len(systems)
        td, dev = self._tdtype, self.device
        counts_arr = np.array(counts, dtype=np.int64)
        ptr = np.concatenate(([0], np.cumsum(counts_arr)))
        batch = np.repeat(np.arange(n_sys, dtype=np.int64), counts_arr)
        edge_index = torch.from_numpy(np.concatenate(edges, axis=1)).to(dev)
        unit_shifts = torch.from_numpy(np.concatenate(shifts).astype(np.float64)).to(dev, td)
        cell_t = torch.from_numpy(np.concatenate(cells)).to(dev, td)  # (3 n_sys, 3)
        batch_t = torch.from_numpy(batch).to(dev)
        if n_sys == 1:  # each edge's shift in A: unit shifts times the rows of its system's cell
            shifts_t = unit_shifts @ cell_t
        else:
            shifts_t = torch.einsum("ec,ecd->ed", unit_shifts, cell_t.view(-1, 3, 3)[batch_t[edge_index[0]]])
        data = {
            "positions": torch.from_numpy(np.concatenate(pos_l)).to(dev, td),
            "node_attrs": torch.from_numpy(np.concatenate(attrs)).to(dev, td),
            "edge_index": edge_index,
            "unit_shifts": unit_shifts,
            "shifts": shifts_t,
            "cell": cell_t,
            "batch": batch_t,
            "ptr": torch.from_numpy(ptr).to(dev),
            "head": torch.zeros(n_sys, dtype=torch.int64, device=dev),
        }
        # TorchScript's graph executor would re-optimise the graph after its first calls, and
        # the optimised float32 graph rounds differently: a run's result would then depend on
        # how many calls its worker made before it (so on the worker count). Unoptimised, a
        # scripted call equals the eager one bit for bit, and is no slower on CPU.
        with torch.jit.optimized_execution(False):
            out = self.model(data, training=False, compute_force=True, compute_stress=any(periodic))
        energies = out["energy"].detach().to(torch.float64).cpu().numpy()
        forces = out["forces"].detach().to(torch.float64).cpu().numpy()
        stress = out["stress"].detach().to(torch.float64).cpu().numpy().reshape(n_sys, 3, 3) \
            if any(periodic) and out["stress"] is not None else np.zeros((n_sys, 3, 3))
        results = [(float(energies[k]), forces[ptr[k]:ptr[k + 1]],
                    stress[k] if periodic[k] else np.zeros((3, 3))) for k in range(n_sys)]
        self.model_time_s += time.perf_counter() - t0
        self.n_calls += 1
        return results


def label_errors(model_path: str | os.PathLike, frames, dtype: str = "float64") -> dict[str, float]:
    """RMSE of a MACE model against the response labels of rmdata frames.

    Forces: per Cartesian component against ``REF_forces`` (eV/A), and relative to the
    labels' RMS; stress: per Voigt component against ``REF_stress`` (eV/A^3) over the
    periodic frames (None without any). ``frames`` is a sequence of ASE Atoms.
    """
    evaluator = MACEEvaluator(model_path, dtype=dtype, script=False)
    df, f_ref, ds, s_ref = [], [], [], []
    iu = np.triu_indices(3)
    for k, atoms in enumerate(frames):
        ref_f = atoms.arrays.get("REF_forces")
        if ref_f is None:
            raise RMError(f"frame {k}: no REF_forces label; give an rmdata file")
        periodic = bool(atoms.pbc.any())
        _, forces, stress = evaluator.evaluate(atoms.positions, atoms.cell.array, atoms.numbers, atoms.pbc)
        df.append((forces - ref_f).ravel())
        f_ref.append(np.asarray(ref_f).ravel())
        if periodic and "REF_stress" in atoms.info:
            ref_s = np.asarray(atoms.info["REF_stress"], dtype=float).reshape(-1)
            ref_s = ref_s.reshape(3, 3) if ref_s.size == 9 else _voigt_to_full(ref_s)
            ds.append((stress - ref_s)[iu])
            s_ref.append(ref_s[iu])
    if not df:
        raise RMError("no frames to evaluate")
    df, f_ref = np.concatenate(df), np.concatenate(f_ref)
    out = {"n_frames": len(frames), "force_rmse_eV_per_A": float(np.sqrt(np.mean(df**2))),
           "force_relative_rmse": float(np.sqrt(np.mean(df**2) / np.mean(f_ref**2))),
           "stress_rmse_eV_per_A3": None, "stress_relative_rmse": None}
    if ds:
        ds, s_ref = np.concatenate(ds), np.concatenate(s_ref)
        out["stress_rmse_eV_per_A3"] = float(np.sqrt(np.mean(ds**2)))
        out["stress_relative_rmse"] = float(np.sqrt(np.mean(ds**2) / np.mean(s_ref**2)))
    return out


def _voigt_to_full(voigt: np.ndarray) -> np.ndarray:
    from ase.stress import voigt_6_to_full_3x3_stress

    return voigt_6_to_full_3x3_stress(voigt)
