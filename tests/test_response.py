"""Physics of the response labels, each checked against an independent calculation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from rmdata.make import label_structure
from rmdata.perturb import NoiseParams, perturb
from rmdata.presets import get_preset
from rmdata.response import LabelParams, compute_labels, green_lagrange

# ------------------------------------------------------------------ brute-force reference


def brute_mic(dr: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Shortest image of each vector by trying all shifts in [-2, 2]^3 (slow, obvious)."""
    out = np.empty_like(dr)
    shifts = np.array(list(itertools.product(range(-2, 3), repeat=3))) @ cell
    for a, v in enumerate(dr):
        cands = v + shifts
        out[a] = cands[np.argmin(np.linalg.norm(cands, axis=1))]
    return out


def brute_repulsion(pos: np.ndarray, cell: np.ndarray | None, p: LabelParams):
    """Repulsion forces/energy by a double loop over atom pairs and image shifts."""
    n = len(pos)
    forces = np.zeros((n, 3))
    energy = 0.0
    shifts = [np.zeros(3)] if cell is None else [
        np.array(s) @ cell for s in itertools.product(range(-2, 3), repeat=3)]
    for i in range(n):
        for j in range(n):
            for sh in shifts:
                if i == j and not np.any(sh):
                    continue
                d = pos[j] + sh - pos[i]
                r = np.linalg.norm(d)
                if r < p.rc:
                    x = 1 - r**2 / p.rc**2
                    energy += 0.5 * p.rep_m * x**p.rep_n
                    forces[i] += -2 * p.rep_m * p.rep_n * x ** (p.rep_n - 1) / p.rc**2 * d
    return forces, energy


def one_frame(atoms: Atoms, ref: Atoms, params: LabelParams):
    """Labels of a single frame ``atoms`` of reference ``ref``."""
    if ref.pbc.any():
        scaled, ref_cell = ref.get_scaled_positions(wrap=False), np.array(ref.cell)
        cells = np.array(atoms.cell)[None]
    else:
        scaled, ref_cell, cells = ref.positions.copy(), np.eye(3), np.eye(3)[None]
    return compute_labels(atoms.positions[None], cells, atoms.pbc, scaled, ref_cell, params)


def numerical_forces(frame: Atoms, ref: Atoms, params: LabelParams, h: float = 1e-6) -> np.ndarray:
    """-dE/dr of the pseudo energy by central finite differences (eV/A)."""
    num = np.zeros((len(frame), 3))
    for a in range(len(frame)):
        for c in range(3):
            e = []
            for sign in (1, -1):
                moved = frame.copy()
                moved.positions[a, c] += sign * h
                e.append(one_frame(moved, ref, params).pseudo_energy[0])
            num[a, c] = -(e[0] - e[1]) / (2 * h)
    return num


@pytest.fixture
def crystal_pair():
    """A reference diamond cell and a noisy, strained frame with two close contacts."""
    ref = bulk("C", "diamond", a=3.567, cubic=True)
    rng = np.random.default_rng(3)
    frame = ref.copy()
    frame.set_cell(np.array(ref.cell) * 1.03 + rng.uniform(-0.1, 0.1, (3, 3)), scale_atoms=True)
    frame.positions += rng.uniform(-0.3, 0.3, frame.positions.shape)
    # atom 1 close to atom 0, atom 2 close to atom 0 too: two pairs sharing index 0
    frame.positions[1] = frame.positions[0] + [0.4, 0.1, 0.0]
    frame.positions[2] = frame.positions[0] + [-0.2, 0.45, 0.1]
    return ref, frame


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("raw", [False, True])
def test_forces_are_minus_gradient_of_pseudo_energy_crystal(crystal_pair, raw):
    ref, frame = crystal_pair
    params = LabelParams(k=1.3, rc=0.75, raw=raw)
    labels = one_frame(frame, ref, params)
    np.testing.assert_allclose(labels.forces[0], numerical_forces(frame, ref, params), atol=1e-7)


@pytest.mark.parametrize("raw", [False, True])
def test_forces_are_minus_gradient_of_pseudo_energy_molecule(raw):
    ref = molecule("CH3CH2OH")
    ref.pbc = False
    rng = np.random.default_rng(5)
    frame = ref.copy()
    frame.rotate(20, "z", center="COM")
    frame.positions += rng.uniform(-0.3, 0.3, frame.positions.shape) + [1.0, -2.0, 0.5]
    params = LabelParams(k=0.8, rc=1.2, raw=raw)  # rc large enough that C-H contacts repel
    labels = one_frame(frame, ref, params)
    assert np.abs(labels.forces).max() > 0.1
    np.testing.assert_allclose(labels.forces[0], numerical_forces(frame, ref, params), atol=1e-6)


def test_raw_labels_equal_minus_k_dr_plus_repulsion_exactly(crystal_pair):
    ref, frame = crystal_pair
    params = LabelParams(k=1.7, rc=0.75, raw=True)
    labels = one_frame(frame, ref, params)
    cell = np.array(frame.cell)
    r0 = ref.get_scaled_positions(wrap=False) @ cell
    dr = brute_mic(frame.positions - r0, cell)
    f_rep, e_rep = brute_repulsion(frame.positions, cell, params)
    assert np.abs(f_rep).max() > 0.1  # the close contacts really repel
    np.testing.assert_allclose(labels.forces[0], -params.k * dr + f_rep, atol=1e-12, rtol=0)


def test_repeated_pair_indices_are_accumulated():
    """Atom 0 has three close neighbours: every pair force must reach it."""
    pos = np.array([[5, 5, 5], [5.4, 5, 5], [5, 5.5, 5], [4.6, 4.8, 5.2], [8, 8, 8.0]])
    ref = Atoms("C5", positions=pos, cell=[10, 10, 10], pbc=True)
    params = LabelParams(k=1.0, rc=0.75, raw=True)
    labels = one_frame(ref, ref, params)  # frame = reference: harmonic part is zero
    f_rep, _ = brute_repulsion(pos, np.array(ref.cell), params)
    np.testing.assert_allclose(labels.forces[0], f_rep, atol=1e-12, rtol=0)
    # the force on atom 0 is the sum of three pair forces, not one of them
    singles = [brute_repulsion(pos[[0, j]], np.array(ref.cell), params)[0][0] for j in (1, 2, 3)]
    np.testing.assert_allclose(labels.forces[0][0], np.sum(singles, axis=0), atol=1e-12)


def test_repulsion_across_periodic_images_in_small_cell():
    """In a 1.2 A cell each atom sees its own images and its neighbours' images."""
    ref = Atoms("C2", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[1.2, 1.3, 1.25], pbc=True)
    frame = ref.copy()
    frame.positions += [[0.05, -0.02, 0.03], [-0.3, 0.25, 0.1]]
    params = LabelParams(k=1.0, rc=0.9, raw=True)
    labels = one_frame(frame, ref, params)
    cell = np.array(frame.cell)
    dr = brute_mic(frame.positions - ref.get_scaled_positions() @ cell, cell)
    f_rep, _ = brute_repulsion(frame.positions, cell, params)
    np.testing.assert_allclose(labels.forces[0], -dr + f_rep, atol=1e-12, rtol=0)


def test_minimum_image_across_the_boundary():
    ref = Atoms("C", scaled_positions=[[0.01, 0.5, 0.5]], cell=[4.0, 4.0, 4.0], pbc=True)
    frame = Atoms("C", scaled_positions=[[0.99, 0.5, 0.5]], cell=[4.0, 4.0, 4.0], pbc=True)
    labels = one_frame(frame, ref, LabelParams(k=2.0, rc=0.75, raw=True))
    # moved by -0.08 A through the boundary, not +3.92 A across the cell
    np.testing.assert_allclose(labels.forces[0][0], [2.0 * 0.08, 0, 0], atol=1e-12)


def test_minimum_image_in_a_skewed_cell():
    cell = np.array([[3.0, 0, 0], [2.9, 1.0, 0], [0.3, 0.2, 4.0]])
    ref = Atoms("C2", scaled_positions=[[0.02, 0.97, 0.5], [0.5, 0.5, 0.5]], cell=cell, pbc=True)
    rng = np.random.default_rng(0)
    frame = ref.copy()
    frame.positions += rng.uniform(-0.4, 0.4, (2, 3))
    frame.wrap()
    labels = one_frame(frame, ref, LabelParams(k=1.0, rc=0.0, raw=True))
    expected = -brute_mic(frame.positions - ref.get_scaled_positions(wrap=False) @ cell, cell)
    np.testing.assert_allclose(labels.forces[0], expected, atol=1e-12)


def test_level_zero_frames_have_zero_force():
    ref = bulk("C", "diamond", a=3.567, cubic=True)
    batch = label_structure(ref, get_preset("diamond"), np.random.default_rng(0), "diamond")
    level0 = batch.noise_level == 0
    assert level0.sum() == 11  # one per strain
    assert np.abs(batch.forces[level0]).max() < 1e-12
    # the exact reference frame is in the set, with zero stress as well
    exact = level0 & (batch.strain == 0)
    assert exact.sum() == 1 and np.abs(batch.stress[exact]).max() < 1e-15
    np.testing.assert_allclose(batch.cells[exact][0], ref.cell.array)


def test_default_labels_have_no_net_force_crystal():
    ref = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    batch = label_structure(ref, get_preset("crystal"), np.random.default_rng(1), "nacl")
    assert np.abs(batch.forces).max() > 0.1
    assert np.abs(batch.forces.sum(axis=1)).max() < 1e-10
    raw = label_structure(ref, get_preset("crystal").with_overrides(raw=True),
                          np.random.default_rng(1), "nacl")
    assert np.abs(raw.forces.sum(axis=1)).max() > 1e-3  # the raw labels do carry a net force


def test_default_labels_have_no_net_force_or_torque_molecule():
    ref = molecule("CH3CH2OH")
    ref.pbc = False
    batch = label_structure(ref, get_preset("molecule"), np.random.default_rng(2), "ethanol")
    forces, pos = batch.forces, batch.positions
    assert np.abs(forces).max() > 0.1
    assert np.abs(forces.sum(axis=1)).max() < 1e-10
    torque = np.cross(pos - pos.mean(axis=1, keepdims=True), forces).sum(axis=1)
    assert np.abs(torque).max() < 1e-10
    raw = label_structure(ref, get_preset("molecule").with_overrides(raw=True),
                          np.random.default_rng(2), "ethanol")
    raw_torque = np.cross(pos - pos.mean(axis=1, keepdims=True), raw.forces).sum(axis=1)
    assert np.abs(raw_torque).max() > 1e-3


def test_volumetric_expansion_gives_tensile_stress_of_the_right_size():
    ref = bulk("C", "diamond", a=3.567, cubic=True)
    params = LabelParams()
    for s in (0.05, -0.05):
        frame = ref.copy()
        frame.set_cell(ref.cell * (1 + s), scale_atoms=True)
        stress = one_frame(frame, ref, params).stress[0]
        eps = ((1 + s) ** 2 - 1) / 2
        lam, mu = params.lame
        expected = (3 * lam + 2 * mu) * eps  # = E/(1-2 nu) * eps = 2.5 eps for E=1, nu=0.3
        np.testing.assert_allclose(3 * lam + 2 * mu, 2.5)
        np.testing.assert_allclose(stress, expected * np.eye(3), atol=1e-14)
        assert np.sign(stress[0, 0]) == np.sign(s)  # expanded -> positive (tensile)


def test_green_lagrange_is_rotation_invariant():
    ref_cell = np.array([[3.0, 0.1, 0], [0.2, 3.5, 0], [0.0, 0.3, 4.0]])
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    deformed = ref_cell @ np.diag([1.02, 0.97, 1.05])
    e1 = green_lagrange(ref_cell, deformed[None])
    e2 = green_lagrange(ref_cell, (deformed @ rot)[None])
    np.testing.assert_allclose(e1, e2, atol=1e-14)


def test_perturb_is_seeded_and_bounded():
    ref = bulk("C", "diamond", a=3.567, cubic=True)
    p = NoiseParams()
    a = perturb(ref, p, np.random.default_rng(7))
    b = perturb(ref, p, np.random.default_rng(7))
    np.testing.assert_array_equal(a.positions, b.positions)
    assert len(a) == 121
    # displacement per component bounded by level * step / 2
    r0 = a.ref_scaled @ a.cells
    frac = (a.positions - r0) @ np.linalg.inv(a.cells)
    d = (frac - np.round(frac)) @ a.cells
    bound = a.noise_level[:, None, None] * p.step_size / 2 + 1e-12
    assert np.all(np.abs(d) <= bound)
