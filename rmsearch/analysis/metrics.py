"""Generation metrics against a reference set (CDVAE; Sultanov et al., JCIM 2023).

- **structural validity** (CDVAE): every interatomic distance > 0.5 A (periodic images
  included) and cell volume > 0.1 A^3;
- **compositional validity** (CDVAE): SMACT charge neutrality with the Pauling
  electronegativity test, pure metals and alloys counted as valid (``smact_validity``);
- **COV-R / COV-P** (CDVAE): structure fingerprint = mean over sites of the matminer
  CrystalNN ``ops`` site fingerprint; composition fingerprint = matminer Magpie
  ElementProperty, standardised with the reference set's mean and std (CDVAE uses fixed
  MP-20 training statistics). A reference is *recalled* when the nearest generated
  structure fingerprint is within 0.4 and the nearest generated composition fingerprint
  within 10 (Euclidean); COV-P likewise with the roles swapped. As in CDVAE the two
  nearest neighbours are taken independently;
- **FD**: Frechet distance between Gaussians fitted to the generated and reference
  structure fingerprints, ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

Coverage and FD use the generated structures that are structurally valid and have a
fingerprint. Unlike CDVAE they do not also require compositional validity: a search
relaxes the compositions it is asked for, so SMACT validity describes the request, not
the generator; it is reported on its own.

Fingerprints of symmetry-equivalent sites (spglib, symprec 1e-3 A) are computed once and
weighted by multiplicity: the mean is the same, the cost drops by the multiplicity.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure
from scipy.spatial.distance import cdist

from rmsearch.symmetry import symmetry_dataset

log = logging.getLogger(__name__)

STRUCT_CUTOFF = 0.4  # CDVAE COV threshold on CrystalNN fingerprints (mp20)
COMP_CUTOFF = 10.0  # CDVAE COV threshold on standardised Magpie fingerprints (mp20)
MIN_DISTANCE = 0.5  # A, CDVAE structural validity
MIN_VOLUME = 0.1  # A^3, CDVAE structural validity


def structural_validity(struct: Structure) -> bool:
    """CDVAE rule: all distances > 0.5 A (periodic images included) and volume > 0.1 A^3."""
    if struct.volume <= MIN_VOLUME:
        return False
    if len(struct) == 1:
        return bool(min(struct.lattice.abc) > MIN_DISTANCE)
    dist = struct.distance_matrix + np.diag(np.full(len(struct), np.inf))
    # a site's own periodic image: the shortest lattice vector
    return bool(dist.min() > MIN_DISTANCE and min(struct.lattice.abc) > MIN_DISTANCE)


def compositional_validity(comp: Composition | str) -> bool:
    """CDVAE rule via SMACT: a charge-neutral, electronegativity-ordered oxidation-state set exists."""
    from smact.screening import smact_validity

    return bool(smact_validity(Composition(comp), use_pauling_test=True, include_alloys=True))


def _crystalnn_fingerprint(struct: Structure) -> np.ndarray:
    from matminer.featurizers.site import CrystalNNFingerprint

    fp = CrystalNNFingerprint.from_preset("ops")
    cell = (struct.lattice.matrix, struct.frac_coords, [s.specie.Z for s in struct])
    data = symmetry_dataset(cell, 1e-3)
    equiv = np.asarray(data.equivalent_atoms) if data is not None else np.arange(len(struct))
    unique, counts = np.unique(equiv, return_counts=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        site_fps = np.array([fp.featurize(struct, int(i)) for i in unique], dtype=float)
    return (site_fps * counts[:, None]).sum(axis=0) / counts.sum()


def _fingerprint_or_nan(struct: Structure) -> np.ndarray | None:
    try:
        return _crystalnn_fingerprint(struct)
    except Exception as exc:  # CrystalNN fails on some degenerate structures: count it, go on
        log.warning("CrystalNN fingerprint failed for %s: %s", struct.composition.reduced_formula, exc)
        return None


def structure_fingerprints(structures: Sequence[Structure], workers: int = 1) -> np.ndarray:
    """CrystalNN ``ops`` fingerprints averaged over sites, shape (n, 61); failed rows are NaN."""
    if workers > 1 and len(structures) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=_pin) as pool:
            fps = list(pool.map(_fingerprint_or_nan, structures, chunksize=4))
    else:
        fps = [_fingerprint_or_nan(s) for s in structures]
    width = next((len(f) for f in fps if f is not None), 61)
    return np.array([f if f is not None else np.full(width, np.nan) for f in fps]).reshape(len(fps), width)


def _pin() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def composition_fingerprints(compositions: Sequence[Composition | str]) -> np.ndarray:
    """Magpie ElementProperty fingerprints, shape (n, 132)."""
    from matminer.featurizers.composition import ElementProperty

    ep = ElementProperty.from_preset("magpie", impute_nan=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([ep.featurize(Composition(c)) for c in compositions], dtype=float)


def coverage(gen_struct: np.ndarray, ref_struct: np.ndarray, gen_comp: np.ndarray, ref_comp: np.ndarray,
             *, struct_cutoff: float = STRUCT_CUTOFF, comp_cutoff: float = COMP_CUTOFF) -> tuple[float, float]:
    """(COV-R, COV-P) of generated vs reference fingerprints (see module doc)."""
    mean, std = ref_comp.mean(axis=0), ref_comp.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    gen_c, ref_c = (gen_comp - mean) / std, (ref_comp - mean) / std
    d_struct = cdist(gen_struct, ref_struct)
    d_comp = cdist(gen_c, ref_c)
    recall = (d_struct.min(axis=0) <= struct_cutoff) & (d_comp.min(axis=0) <= comp_cutoff)
    precision = (d_struct.min(axis=1) <= struct_cutoff) & (d_comp.min(axis=1) <= comp_cutoff)
    return float(recall.mean()), float(precision.mean())


def frechet_distance(fp1: np.ndarray, fp2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two fingerprint sets, shapes (n1, d), (n2, d)."""
    mu1, mu2 = fp1.mean(axis=0), fp2.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(fp1, rowvar=False)), np.atleast_2d(np.cov(fp2, rowvar=False))
    # Tr (S1 S2)^(1/2) = sum of sqrt eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2):
    # stable for the singular covariances of fingerprints (scipy's sqrtm of S1 S2 is not)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    fd = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fd, 0.0)  # rounding can leave -1e-15


def generation_metrics(generated: Sequence[Structure], reference: Sequence[Structure], *, workers: int = 1,
                       ref_fingerprints: np.ndarray | None = None,
                       gen_fingerprints: np.ndarray | None = None) -> dict[str, Any]:
    """Validity, COV-R, COV-P and FD of ``generated`` against ``reference`` structures.

    Precomputed structure fingerprints (from :func:`structure_fingerprints`) may be passed
    to avoid recomputing them.
    """
    if not generated or not reference:
        raise ValueError(f"need generated ({len(generated)}) and reference ({len(reference)}) structures")
    struct_ok = np.array([structural_validity(s) for s in generated])
    comp_ok = np.array([compositional_validity(s.composition) for s in generated])
    gen_fp = gen_fingerprints if gen_fingerprints is not None else structure_fingerprints(generated, workers)
    ref_fp = ref_fingerprints if ref_fingerprints is not None else structure_fingerprints(reference, workers)
    use = struct_ok & np.isfinite(gen_fp).all(axis=1)
    ref_use = np.isfinite(ref_fp).all(axis=1)
    out: dict[str, Any] = {
        "n_generated": len(generated), "n_reference": len(reference),
        "structural_validity": float(struct_ok.mean()), "compositional_validity": float(comp_ok.mean()),
        "validity": float((struct_ok & comp_ok).mean()),
        "n_used": int(use.sum()), "n_fingerprint_failed": int((~np.isfinite(gen_fp).all(axis=1)).sum()),
        "struct_cutoff": STRUCT_CUTOFF, "comp_cutoff": COMP_CUTOFF,
        "cov_r": math.nan, "cov_p": math.nan, "frechet_distance": math.nan,
    }
    if use.sum() >= 2 and ref_use.sum() >= 2:
        gen_comp = composition_fingerprints([s.composition for s, u in zip(generated, use) if u])
        ref_comp = composition_fingerprints([s.composition for s, u in zip(reference, ref_use) if u])
        out["cov_r"], out["cov_p"] = coverage(gen_fp[use], ref_fp[ref_use], gen_comp, ref_comp)
        out["frechet_distance"] = frechet_distance(gen_fp[use], ref_fp[ref_use])
    return out
