"""Molecule scoring (rmsearch.analysis.molecules) on known cases, and the kick stage of the
relax protocol (RelaxSettings.kick, ``launch --kick``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

from rmdata.molecules import molecule_from_smiles
from rmsearch.analysis.molecules import (
    check_molecule,
    posebusters_checks,
    score_molecules,
)


def _trigonal_bipyramid_ch5() -> Atoms:
    """CH5 with C-H 1.09 A: a pentavalent carbon."""
    d = 1.09
    h = [(0, 0, d), (0, 0, -d)] + [(d * np.cos(a), d * np.sin(a), 0) for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]
    return Atoms("CH5", positions=[(0, 0, 0), *h])


def test_ethanol_is_valid_and_known():
    check = check_molecule(molecule_from_smiles("CCO"), known={"CCO"})
    assert check.valid and check.smiles == "CCO" and check.known and not check.charged


def test_dimethyl_ether_is_a_new_isomer_of_ethanol():
    check = check_molecule(molecule_from_smiles("COC"), known={"CCO"})
    assert check.valid and check.smiles == "COC" and not check.known


def test_pentavalent_carbon_is_invalid():
    check = check_molecule(_trigonal_bipyramid_ch5())
    assert not check.valid and not check.charged and check.reason


def test_zwitterion_is_reported_as_charged_not_valid():
    """Glycine zwitterion: bonds only with formal charges N+ and O-, total charge 0."""
    check = check_molecule(molecule_from_smiles("[NH3+]CC(=O)[O-]"))
    assert not check.valid and check.charged
    assert "N+1" in check.reason and "O-1" in check.reason


def test_two_molecules_are_two_fragments():
    a, b = molecule_from_smiles("O"), molecule_from_smiles("O")
    b.positions += (6.0, 0, 0)
    check = check_molecule(a + b)
    assert not check.valid and "2 fragments" in check.reason


def test_compressed_ethanol_fails_posebusters_bond_lengths_but_stays_valid():
    """C-O squeezed from 1.42 to 1.0 A (the hydroxyl moved along): RDKit still assigns the
    bonds, PoseBusters flags the bond length."""
    good = molecule_from_smiles("CCO")
    bad = good.copy()
    o = int(np.flatnonzero(bad.numbers == 8)[0])
    dist = np.linalg.norm(bad.positions - bad.positions[o], axis=1)
    c = int(np.argmin(np.where(bad.numbers == 6, dist, np.inf)))
    hydroxyl = [o] + [i for i in np.flatnonzero(bad.numbers == 1) if dist[i] < 1.1]
    bond = bad.positions[o] - bad.positions[c]
    bad.positions[hydroxyl] += bond / np.linalg.norm(bond) * 1.0 - bond
    assert check_molecule(bad).valid
    checks = posebusters_checks([good, bad])
    if checks is None:
        pytest.skip("posebusters not installed")
    assert all(checks[0].values())
    assert checks[1]["bond_lengths"] is False


def test_score_molecules_counts_every_start():
    """A failed run and a missing record both count against validity."""
    from rmsearch.records import RunRecord

    ok = molecule_from_smiles("CCO")
    ok.pbc = False
    recs = [RunRecord.from_atoms(ok, run_id=0, seed=0, status="converged"),
            RunRecord.from_atoms(molecule_from_smiles("COC"), run_id=1, seed=0, status="converged"),
            RunRecord.from_atoms(ok, run_id=2, seed=0, status="lost_atoms")]
    scores = score_molecules(recs, nstarts=4, known={"CCO"}, posebusters=False)
    total = scores["total"]
    assert total["starts"] == 4 and total["valid"] == 2 and total["valid_percent"] == 50.0
    assert total["known"] == 1 and total["new"] == 1 and total["distinct_isomers"] == 2
    assert scores["compositions"]["C2H6O"]["starts"] == 4


# ------------------------------------------------------------------------- the kick stage


def _cluster(seed: int = 3) -> Atoms:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 3.0, size=(5, 3))
    pos[:, 0] *= 1.5
    return Atoms("Li3S2", positions=pos, pbc=False)


def test_kick_stage_relaxes_twice_to_the_tighter_tolerance(lj_potential):
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer, RelaxSettings

    pot = load_potential(lj_potential)
    with Relaxer(pot, RelaxSettings(fmax=0.01, optimizer="fire2-lbfgs", max_steps=4000)) as plain:
        one = plain.relax(_cluster())
    settings = RelaxSettings(fmax=0.01, kick=0.5, kick_fmax=1e-4, optimizer="fire2-lbfgs", max_steps=4000)
    with Relaxer(pot, settings) as relaxer:
        a = relaxer.relax(_cluster(), rng=np.random.default_rng([0, 7, 1]))
        b = relaxer.relax(_cluster(), rng=np.random.default_rng([0, 7, 1]))
    assert one.converged and one.first_stage is None
    assert a.converged and a.fmax < 1e-4, a
    assert a.first_stage["status"] == "converged" and a.first_stage["fmax"] < 0.01
    assert a.first_stage["energy"] == pytest.approx(one.energy, abs=1e-9)
    assert a.n_force_calls > a.first_stage["n_force_calls"]
    assert b.energy == pytest.approx(a.energy, abs=1e-10)  # seeded: the same kick
    assert np.allclose(b.atoms.positions, a.atoms.positions, atol=1e-6)
    assert relaxer.settings.fmax == 0.01  # the stage-2 tolerance does not leak


def test_launch_kick_option_records_both_stages(lj_potential, tmp_path):
    from rmsearch.records import read_records
    from rmsearch.runner import launch

    common = dict(potential=lj_potential, nruns=3, workers=1, progress=False, molecule="Li2S2", seed=0)
    launch(tmp_path / "kick", kick=0.75, kick_fmax=0.001, **common)
    launch(tmp_path / "plain", **common)
    kicked = sorted(read_records(tmp_path / "kick" / "shards"), key=lambda r: r.run_id)
    plain = sorted(read_records(tmp_path / "plain" / "shards"), key=lambda r: r.run_id)
    config = json.loads((tmp_path / "kick" / "config.json").read_text())
    assert config["relax"]["kick"] == 0.75 and config["relax"]["kick_fmax"] == 0.001
    assert any(p.status == "converged" for p in plain)
    for k, p in zip(kicked, plain):
        assert "first_stage" not in p.extra
        if p.status not in ("converged", "not_converged"):  # a failed first stage is not kicked
            assert k.status == p.status and "first_stage" not in k.extra
            continue
        assert k.extra["first_stage"]["energy"] == pytest.approx(p.energy, abs=1e-8)
        if k.status == "converged":
            assert k.fmax < 0.001
