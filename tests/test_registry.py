"""The pretrained-model registry: every shipped model against its card, refusal of modified
files, ``model:NAME`` wherever a potential directory is taken, and each model's headline
figure on a small case."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rmdata.errors import RMError
from rmsearch import registry

CARDS = registry.list_models()
NAMES = [c.name for c in CARDS]


def rmsearch_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", "from rmsearch.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_at_least_three_models_are_shipped_and_listed_as_json():
    shown = json.loads(rmsearch_cli("models", "list", "--json").stdout)
    assert len(shown) >= 3, shown
    assert {m["name"] for m in shown} == set(NAMES)
    for m in shown:
        assert m["kind"] in ("crystal", "molecule")
        assert m["elements"] and all(isinstance(e, str) for e in m["elements"])
    kinds = {m["kind"] for m in shown}
    assert kinds == {"crystal", "molecule"}, kinds


@pytest.mark.parametrize("name", NAMES)
def test_model_matches_its_card(name):
    """Checksums, elements and backend of the files equal the card; shipped files are small."""
    from rmsearch.potentials import load_potential

    card = registry.get_card(name)
    registry.verify_model(card)
    pot = load_potential(registry.model_directory(f"model:{name}"))
    assert pot.elements == card.elements
    assert pot.backend == card.backend
    assert card.size_bytes < 2_000_000, "shipped models are small files"
    assert card.reproduce.startswith("python workflows/pretrained.py ")
    assert card.training["sha256"] and card.training["frames"] > 0
    assert card.finds, "a card says what the model was measured to find"
    if card.backend == "mace":
        assert 5_000 < card.parameters < 50_000  # the paper's size (CACE 2k-16k)
        errors = card.errors["mace_validation_frames"]
        assert 0 < errors["force_rmse_eV_per_A"] < 0.3 and errors["n_frames"] > 100


def test_modified_model_file_is_refused(tmp_path, monkeypatch):
    """A shipped model whose file differs from its card's SHA-256 never loads."""
    name = NAMES[0]
    copy = tmp_path / "pretrained"
    shutil.copytree(registry.REGISTRY_DIR, copy)
    monkeypatch.setattr(registry, "REGISTRY_DIR", copy)
    card = registry.get_card(name)
    target = copy / name / next(iter(card.files))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(RMError, match="SHA-256"):
        registry.model_directory(f"model:{name}")
    (copy / name / "extra.txt").write_text("x")
    target.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(RMError):
        registry.model_directory(name)


def test_unknown_model_is_a_one_line_error(tmp_path):
    proc = rmsearch_cli("launch", "--potential", "model:nope", "--system", "C", "--nruns", "2",
                        "-o", str(tmp_path / "run"), check=False)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and "rmsearch models list" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_export_copies_a_shipped_model(tmp_path):
    from rmsearch.potentials import load_potential

    rmsearch_cli("export", "model:carbon-uf3", "--out", str(tmp_path / "pot"))
    assert load_potential(tmp_path / "pot").elements == ["C"]
    again = rmsearch_cli("export", "model:carbon-uf3", "--out", str(tmp_path / "pot"), check=False)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_carbon_model_finds_cubic_diamond_by_name(tmp_path):
    """The carbon card's headline on a small case: a 40-run search of 2-4 C atoms by
    ``--potential model:carbon-uf3`` has cubic diamond (Fd-3m) as its lowest valid cluster."""
    rmsearch_cli("launch", "--potential", "model:carbon-uf3", "--system", "C", "--natoms", "2-4",
                 "--volume-factor", "0.684-1.008", "--nruns", "40", "--workers", "1", "--no-progress",
                 "-o", str(tmp_path / "run"))
    rmsearch_cli("analyze", str(tmp_path / "run"))
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    best = report["top_clusters"][0]
    assert best["spacegroups"]["0.01"][0] == 227, best
    assert np.isclose(best["volume_per_atom"], 5.67, rtol=0.05)


def test_molecules_model_holds_ethanol():
    """The molecules card's headline on a small case: a rattled ethanol relaxed to fmax
    0.001 eV/A with model:molecules-mace is a valid ethanol again."""
    from rmdata.molecules import molecule_from_smiles
    from rmsearch.analysis.molecules import check_molecule
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer, RelaxSettings

    mol = molecule_from_smiles("CCO")
    mol.pbc = False
    mol.rattle(0.1, seed=1)
    with Relaxer(load_potential(registry.model_directory("model:molecules-mace")),
                 RelaxSettings(fmax=0.001, max_steps=3000)) as relaxer:
        out = relaxer.relax(mol)
    check = check_molecule(out.atoms, {"CCO"})
    assert out.converged and check.valid and check.smiles == "CCO", (out.status, check)


def test_mp20_model_pulls_a_strained_training_crystal_back():
    """model:mp20-mace relaxes a training crystal strained by +4 % and by -4 % per axis
    (+-12.5 % volume) to one and the same cell volume (a volume minimum, as its stress labels
    demand), within 20 % of the crystal's: its card reports equilibrium volumes of training
    crystals 15 % too large (median of 12)."""
    from rmdata.datasets import load_structures
    from rmsearch.potentials import load_potential
    from rmsearch.relax import Relaxer, RelaxSettings

    _, ref = next(iter(load_structures("mp20-subset", split="train", bad=[])))
    volumes = []
    with Relaxer(load_potential(registry.model_directory("mp20-mace")), RelaxSettings(fmax=0.01)) as relaxer:
        for factor in (1.04, 0.96):
            start = ref.copy()
            start.set_cell(ref.cell * factor, scale_atoms=True)
            start.rattle(0.02, seed=2)
            out = relaxer.relax(start)
            assert out.converged
            volumes.append(out.atoms.get_volume())
    assert abs(volumes[0] / volumes[1] - 1) < 0.01, volumes
    assert abs(volumes[0] / ref.get_volume() - 1) < 0.2, (volumes, ref.get_volume())


@pytest.mark.parametrize(("name", "system"), [("molecules-mace", ["--molecule", "C2H6O", "--fmax", "0.01"]),
                                              ("mp20-mace", ["--system", "Li-S", "--natoms", "2-4"]),
                                              ("lis-mace", ["--system", "Li-S", "--natoms", "2-4"])])
def test_each_mace_model_runs_a_small_search_by_name(name, system, tmp_path):
    """``launch --potential model:NAME`` runs a search with every shipped MACE model: all runs
    done, most converged (forces below the stop rule), results in the run directory."""
    run = tmp_path / "run"
    rmsearch_cli("launch", "--potential", f"model:{name}", *system, "--nruns", "3", "--workers", "1",
                 "--no-progress", "-o", str(run))
    status = json.loads(rmsearch_cli("status", str(run), "--json").stdout)
    assert status["done"] == 3 and status["converged"] >= 2, status
    assert np.isfinite(status["best_energy_per_atom"])


def test_lis_model_holds_antifluorite_li2s():
    """The lis-mace card's headline on a small case: a rattled antifluorite Li2S relaxes to a
    minimum that is still antifluorite (StructureMatcher), at the model's 18-20 A^3/atom."""
    from lis import antifluorite, is_antifluorite

    import rmsearch

    start = antifluorite()
    start.rattle(0.02, seed=3)
    out = rmsearch.relax_atoms(start, "model:lis-mace", fmax=0.01)
    assert out.status == "converged"
    assert is_antifluorite(out.atoms)
    assert 18.0 < out.atoms.get_volume() / len(out.atoms) < 20.0
