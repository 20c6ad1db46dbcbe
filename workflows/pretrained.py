"""Train the shipped (pretrained) models: the exact recipe of each model card.

Each model of ``rmsearch models list`` is made by this script, with the commands a user
types (``rmdata make``, the ``mace_run_train`` command printed by ``rmdata
mace-command``, ``rmsearch export`` or ``rmsearch fit-native``), then ``--install``
copies the potential directory into the package's registry with its model card
(:func:`rmsearch.registry.install_model`): training data and checksum, recipe, this
command, held-out errors (MACE: the frames ``mace_run_train`` kept for validation, and for
``mp20-mace`` also every labelled frame of the val split's crystals; native: the fit's
held-out frames) and, with ``--finds``, what the model was measured to find.

Recipes (chosen by measurement; RESULTS.md has the tables of what was tried):

- ``carbon-uf3``: one 8-atom cubic diamond cell (``rmdata make --dataset diamond``, the
  native recipe), the default ``rmsearch fit-native`` (UF3 taught by SNAP); seconds.
- ``molecules-mace``: the first 505 molecules of the offline set (the whole set when the
  model was trained; ``--limit 505``) x 11 noise levels x 2 noise draws, a one-layer MACE of
  the paper's size (8 channels, max_L 2, correlation 3, r_max 4.5 A; ~14k parameters),
  float32, Adam lr 0.01 decayed x0.97 per epoch with an EMA of the weights, 120 epochs, and
  MACE's nonlinear readout on the one layer (``--readout mlp``: on the tuning compositions
  50 % valid after 23 epochs against 36 % for the linear readout after 120); one core,
  99 min beside other jobs. Tried and not shipped (RESULTS.md, molecules): the same model on all 4,488
  molecules (one draw, 11 epochs, lr x0.88: ~6 min per epoch, validation force RMSE 244
  meV/A) was worse on every composition measured; MACE's ZBL pair term
  (``--pair_repulsion``) was dropped at once: the noisy frames put atoms well inside the ZBL
  wall, where the labels have none (initial force RMSE 216 eV/A).
- ``mp20-mace``: the mp20-subset train split minus every crystal of a val composition or
  of a csp15 composition (so every CSP target is held out; Li2S is in no split), 6 noise
  levels x 5 strains; one-layer MACE, 8 channels, max_L 2, correlation 2, r_max 4.0 A,
  float32, lr 0.005 decayed x0.95 per epoch with EMA (lr 0.01 without decay diverged),
  force and stress weights 100/100 (measured on the Li-S cut, below: with 10/100 the force
  error rose above the labels' RMS), 23 epochs (~2.5 min each on one core; the validation
  force RMSE flattens after ~20: 74 meV/A at epoch 6, 70.4 at 22).
- ``lis-mace``: the chemical-system cut of the same split for Li-S searches (``rmdata make
  --containing Li,S``: the 120 train crystals with Li or S, none a Li-S binary, held-out
  compositions removed as for ``mp20-mace``), the ``mp20-mace`` architecture with force and
  stress weights 100/100, 20 epochs: with the ``mp20-mace`` weights (10/100) the force error
  rose above the labels' RMS while the stress barely moved (RESULTS.md, Li-S recipe table);
  MACE's nonlinear readout on the one layer (``--readout mlp``, ``rmdata-mace-train``): on
  the Li-Se / Li-O / Na-S tuning searches fewer invalid cells and A2X on the pseudo hull in
  two of three (RESULTS.md, Li-S).

Training resumes from its checkpoints (``--restart_latest``): run the same command again
after an interruption. Usage::

    python workflows/pretrained.py molecules-mace --out train_mol
    python workflows/pretrained.py mp20-mace --out train_mp20 --install
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Pipeline, tool

ROOT = Path(__file__).resolve().parent.parent
CSP15 = ROOT / "rmdata" / "data" / "csp15.json"

#: The mp20-mace architecture, optimiser and loss (one layer, 8 channels, max_L 2, correlation 2,
#: r_max 4.0 A; Adam lr 0.005 decayed x0.95 per epoch, EMA; force/stress weights 100/100),
#: shared by the crystal recipes.
MP20_MACE = ["--channels", "8", "--max-L", "2", "--correlation", "2", "--r-max", "4.0",
             "--batch-size", "16", "--lr", "0.005", "--lr-gamma", "0.95", "--ema-decay", "0.99",
             "--forces-weight", "100", "--stress-weight", "100"]


def mp20_make(*cut: str) -> list[str]:
    """``rmdata make`` options of the mp20-subset crystal recipes: the train split, ``cut``
    (e.g. ``--containing Li,S``), 6 noise levels x 5 strains, held-out formulas removed."""
    return ["--dataset", "mp20-subset", "--split", "train", *cut, "--levels", "0,1,2,4,8,16",
            "--strains", "-0.1,-0.05,0,0.05,0.1", "--exclude-formulas", "@heldout.txt"]


#: Each recipe: its kind, what it is for, the ``rmdata make`` options, and either the
#: ``rmdata mace-command`` options or the ``rmsearch fit-native`` options.
RECIPES: dict[str, dict] = {
    "carbon-uf3": {
        "kind": "crystal",
        "description": "carbon from one 8-atom cubic diamond cell (the one-shot example); native UF3 "
                       "taught by SNAP: no training framework at run time",
        "make": ["--dataset", "diamond", "--strains", "-0.2,-0.15,-0.1,-0.05,0,0.05,0.1",
                 "--copies", "3"],
        "native": [],
    },
    "molecules-mace": {
        "kind": "molecule",
        "description": "small molecules of H, C, N, O, S, Cl (<= 7 heavy atoms) from the offline "
                       "molecule set; one-layer MACE of the paper's size with an MLP readout",
        "make": ["--dataset", "molecules", "--limit", "505", "--copies", "2"],
        "mace": ["--channels", "8", "--max-L", "2", "--correlation", "3", "--r-max", "4.5",
                 "--batch-size", "16", "--lr", "0.01", "--lr-gamma", "0.97", "--ema-decay", "0.99",
                 "--epochs", "120", "--eval-interval", "2", "--dtype", "float32", "--readout", "mlp"],
    },
    "mp20-mace": {
        "kind": "crystal",
        "description": "crystals of the 85 elements of the mp20-subset train split, every val and "
                       "csp15 composition held out; one-layer MACE, 8 channels",
        "make": mp20_make(),
        "heldout": "mp20-val+csp15",
        "mace": [*MP20_MACE, "--epochs", "23", "--eval-interval", "2", "--dtype", "float32"],
    },
    "lis-mace": {
        "kind": "crystal",
        "description": "crystals for Li-S searches: the mp20-subset train crystals that contain Li or S "
                       "(no Li-S binary; every val and csp15 composition and Li2S held out); one-layer MACE, "
                       "8 channels, MLP readout, force and stress weights 100/100",
        "make": mp20_make("--containing", "Li,S"),
        "heldout": "mp20-val+csp15",
        "mace": [*MP20_MACE, "--epochs", "20", "--eval-interval", "2", "--dtype", "float32",
                 "--readout", "mlp"],
    },
}


def heldout_formulas(which: str) -> list[str]:
    """The compositions a recipe holds out of training (``mp20-val+csp15``: every
    composition of the mp20-subset val split and of csp15, plus Li2S)."""
    from rmdata.datasets import load_structures
    from rmdata.make import composition_key

    if which != "mp20-val+csp15":
        raise ValueError(f"unknown hold-out set {which!r}")
    bad: list[str] = []
    val = {composition_key(a) for _, a in load_structures("mp20-subset", split="val", bad=bad)}
    csp = {composition_key(f, True) for f in json.loads(CSP15.read_text())["compositions"]}
    return sorted(val | csp | {composition_key("Li2S", True)})


def training_commands(name: str, data: Path | str, seed: int = 0, extra: list[str] | None = None) -> list[str]:
    """The shell lines of the recipe's training, as ``rmdata mace-command`` prints them
    (``extra``: more ``rmdata mace-command`` options, e.g. ``--device cuda``)."""
    return subprocess.run([tool("rmdata"), "mace-command", str(data), "--name", name, "--seed", str(seed),
                           "--restart", *RECIPES[name]["mace"], *(extra or [])],
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()


def build(name: str, out: Path, seed: int = 0, force: bool = False) -> Path:
    """Run the recipe ``name`` in ``out``; returns the potential directory."""
    recipe = RECIPES[name]
    pipe = Pipeline(out, force=force)
    data_dir = pipe.out / "data"
    data_dir.mkdir(exist_ok=True)
    if "heldout" in recipe:
        (data_dir / "heldout.txt").write_text("\n".join(heldout_formulas(recipe["heldout"])) + "\n")
    data = data_dir / "train.xyz"
    pipe.run("data", ["rmdata", "make", *recipe["make"], "--seed", str(seed), "-o", str(data)],
             done=data, cwd=data_dir)
    potential = pipe.out / "potential"
    if "native" in recipe:
        pipe.run("fit", ["rmsearch", "fit-native", str(data), "-o", str(potential), *recipe["native"]],
                 done=potential / "potential.json")
    else:
        workdir = pipe.out / "train"
        workdir.mkdir(exist_ok=True)
        model = workdir / f"{name}.model"
        for i, line in enumerate(training_commands(name, data, seed)):
            pipe.run(f"train{i}" if i else "train", shlex.split(line), done=model, cwd=workdir,
                     log_file=workdir / f"train{i}.log")
        pipe.run("export", ["rmsearch", "export", str(model), "--training", str(data), "--out",
                            str(potential)], done=potential / "potential.json")
    pipe.finish({"model": name, "recipe": recipe, "potential": str(potential)})
    return potential


def card_fields(name: str, out: Path, potential: Path) -> dict:
    """The model card of a finished recipe run: training data, recipe, errors."""
    from ase.io import read

    from rmdata.utils import sha256_file

    recipe = RECIPES[name]
    data = out / "data" / "train.xyz"
    frames = read(data, index=":")
    training = {"file": data.name, "sha256": sha256_file(data), "frames": len(frames),
                "structures": len({a.info.get("source_id") for a in frames}),
                "rmdata_make": shlex.join(["rmdata", "make", *recipe["make"]])}
    heldout = out / "data" / "heldout.txt"
    if heldout.is_file():
        training["heldout_formulas"] = heldout.read_text().split()
    errors: dict = {}
    if "native" in recipe:
        fit = json.loads((potential / "fit.json").read_text())
        errors["fit_holdout_frames"] = fit.get("holdout")
        errors["fit_holdout_frames_without_core"] = fit.get("holdout_snap_only")
    else:
        workdir = out / "train"
        training["wall_s_one_core"] = training_wall_s(workdir)
        training["mace_run_train"] = training_commands(name, data)[-1].replace(str(data), data.name)
        from rmsearch.mace_model import label_errors

        (valid,) = workdir.glob("*_valid_indices_*.txt")
        idx = [int(x) for x in valid.read_text().split()]
        model = potential / "model.model"
        errors["mace_validation_frames"] = {
            **label_errors(model, [frames[i] for i in idx]),
            "frames": "the random 10 % of frames mace_run_train kept out (structures also in training)"}
        if "heldout" in recipe:
            errors["heldout_structures"] = {**heldout_structure_errors(out, potential, recipe),
                                            "frames": "every val-split crystal of known elements, labelled "
                                                      "with the training options (never trained on)"}
    return {"kind": recipe["kind"], "description": recipe["description"], "training": training,
            "recipe": {k: v for k, v in recipe.items() if k in ("make", "mace", "native")},
            "reproduce": f"python workflows/pretrained.py {name} --out DIR --install", "errors": errors}


def training_wall_s(workdir: Path) -> int | None:
    """Seconds mace_run_train ran in ``workdir``: from its own log (``logs/*_run-*.log``, which
    each restart appends to), the span of each session summed, the pauses between left out."""
    from datetime import datetime

    total, span = 0.0, None
    for log in sorted((workdir / "logs").glob("*_run-*.log")):
        if log.name.endswith("_debug.log"):
            continue
        for line in log.read_text().splitlines():
            try:
                t = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
            except ValueError:
                continue
            if "VERIFYING SETTINGS" in line or span is None:  # a (re)start of mace_run_train
                total += (span[1] - span[0]).total_seconds() if span else 0.0
                span = [t, t]
            span[1] = t
    if span is None:
        return None
    return round(total + (span[1] - span[0]).total_seconds())


def heldout_structure_errors(out: Path, potential: Path, recipe: dict) -> dict:
    """Errors on the labelled val-split crystals whose elements the model knows."""
    from ase.io import read

    from rmsearch.mace_model import label_errors

    elements = json.loads((potential / "potential.json").read_text())["elements"]
    test = out / "data" / "val.xyz"
    make = [a for a in recipe["make"] if a not in ("--exclude-formulas", "@heldout.txt")]
    make[make.index("train")] = "val"
    if not test.exists():
        subprocess.run([tool("rmdata"), "make", *make, "--elements", ",".join(elements), "-o", str(test)],
                       check=True, capture_output=True)
    return label_errors(potential / "model.model", read(test, index=":"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("model", choices=sorted(RECIPES), help="the recipe (a shipped model's name)")
    ap.add_argument("-o", "--output", "--out", dest="out", required=True, help="working directory")
    ap.add_argument("--seed", type=int, default=0, help="seed of data and training")
    ap.add_argument("--force", action="store_true", help="redo steps whose outputs exist")
    ap.add_argument("--install", action="store_true",
                    help="copy the result with its model card into the package registry (rmsearch/pretrained/)")
    ap.add_argument("--finds", action="append", default=[],
                    help="a measured result for the card (repeatable), e.g. from RESULTS.md")
    args = ap.parse_args(argv)
    if args.seed < 0:
        raise SystemExit("error: --seed must be >= 0")
    out = Path(args.out).resolve()
    potential = build(args.model, out, seed=args.seed, force=args.force)
    if args.install:
        from rmsearch.registry import install_model

        card = install_model(args.model, potential, finds=args.finds, **card_fields(args.model, out, potential))
        print(f"installed {card.name} in {card.directory} ({card.size_bytes / 1024:.0f} KB, "
              f"{len(card.files)} files)")


if __name__ == "__main__":
    main()
