"""Pretrained models shipped with rmsearch: the registry and its model cards.

A shipped model is a potential directory (what ``rmsearch export`` or ``rmsearch
fit-native`` writes) kept under ``rmsearch/pretrained/<name>/`` with a ``card.json``:

- ``name``, ``kind`` (``crystal`` or ``molecule``), ``elements`` (LAMMPS type order),
  ``backend``, ``description``, ``parameters`` (trainable parameters, MACE only);
- ``files``: SHA-256 of every file of the directory (the card excluded); a model whose
  files do not match is refused (:func:`model_directory`), so a corrupted or edited
  file never runs as the shipped model;
- ``training``: the training data (file, SHA-256, frames, structures, the ``rmdata
  make`` options), the held-out compositions, the training time;
- ``recipe`` and ``reproduce``: the exact command (``workflows/pretrained.py``) that
  makes the model again;
- ``errors``: force and stress RMSE on frames the model was not trained on (eV/A,
  eV/A^3; where the frames come from is stated);
- ``finds``: what the model was measured to find (RESULTS.md has the tables).

Potentials are named ``model:NAME`` wherever a potential directory is accepted
(``rmsearch launch --potential model:NAME``, ``rmsearch export model:NAME``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rmdata.errors import RMError
from rmdata.utils import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

#: Where the shipped models live (package data).
REGISTRY_DIR = Path(__file__).resolve().parent / "pretrained"
#: Prefix that names a shipped model where a potential directory is expected.
PREFIX = "model:"
CARD = "card.json"
KINDS = ("crystal", "molecule")


@dataclass
class ModelCard:
    """What a shipped model is, how it was made and what it finds (see the module docstring)."""

    name: str
    kind: str
    elements: list[str]
    backend: str
    description: str
    files: dict[str, str]
    training: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    reproduce: str = ""
    errors: dict[str, Any] = field(default_factory=dict)
    finds: list[str] = field(default_factory=list)
    parameters: int | None = None
    size_bytes: int = 0

    @property
    def directory(self) -> Path:
        """The potential directory of the model."""
        return REGISTRY_DIR / self.name

    def summary(self) -> dict[str, Any]:
        """The fields of ``rmsearch models list --json``."""
        return {"name": self.name, "kind": self.kind, "elements": self.elements,
                "backend": self.backend, "description": self.description,
                "parameters": self.parameters, "size_bytes": self.size_bytes}


def _read_card(path: Path) -> ModelCard:
    try:
        data = json.loads(path.read_text())
        return ModelCard(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise RMError(f"{path}: unreadable model card ({exc}); reinstall rmsearch") from None


def list_models() -> list[ModelCard]:
    """The cards of every shipped model, by name."""
    if not REGISTRY_DIR.is_dir():
        return []
    return [_read_card(d / CARD) for d in sorted(REGISTRY_DIR.iterdir()) if (d / CARD).is_file()]


def get_card(name: str) -> ModelCard:
    """The card of the shipped model ``name`` (one-line error listing the names)."""
    name = name.removeprefix(PREFIX)
    path = REGISTRY_DIR / name / CARD
    if "/" in name or not path.is_file():
        names = ", ".join(c.name for c in list_models()) or "none"
        raise RMError(f"model {name!r}: no such shipped model; 'rmsearch models list' shows them ({names})")
    return _read_card(path)


def _directory_files(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` (relative POSIX paths), the card excluded."""
    return {p.relative_to(directory).as_posix(): sha256_file(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != CARD}


def verify_model(card: ModelCard) -> None:
    """Raise :class:`RMError` unless the model's files are exactly those of its card."""
    found = _directory_files(card.directory)
    for rel, digest in card.files.items():
        if rel not in found:
            raise RMError(f"model {card.name}: file {rel} missing from {card.directory}; reinstall rmsearch")
        if found[rel] != digest:
            raise RMError(f"model {card.name}: {rel} does not match its card's SHA-256 "
                          f"(expected {digest[:12]}..., found {found[rel][:12]}...); refusing a modified "
                          "model file: reinstall rmsearch")
    extra = sorted(set(found) - set(card.files))
    if extra:
        raise RMError(f"model {card.name}: unexpected file(s) {', '.join(extra)} in {card.directory}; "
                      "reinstall rmsearch")


def model_directory(name: str) -> Path:
    """The verified potential directory of the shipped model ``name`` (``NAME`` or ``model:NAME``)."""
    card = get_card(name)
    verify_model(card)
    return card.directory


def resolve_potential(spec: str | os.PathLike | None) -> Path | None:
    """A potential directory from a ``--potential`` value: ``model:NAME`` or a path."""
    if spec is None:
        return None
    text = os.fspath(spec)
    if text.startswith(PREFIX):
        return model_directory(text)
    path = Path(text)
    if not path.is_dir():
        raise RMError(f"--potential {text}: no such potential directory; give one written by "
                      "'rmsearch export' / 'rmsearch fit-native', or model:NAME ('rmsearch models list')")
    return path


def copy_model(name: str, out: str | os.PathLike, overwrite: bool = False) -> ModelCard:
    """Copy the verified shipped model ``name`` to the potential directory ``out``."""
    card = get_card(name)
    verify_model(card)
    out = Path(out)
    if out.exists() and not overwrite:
        raise RMError(f"{out}: already exists; choose another --out or pass --overwrite")
    with staged_copy(card.directory, out):
        pass  # a plain copy: nothing to change before it replaces ``out``
    return card


@contextlib.contextmanager
def staged_copy(src: Path, dest: Path) -> Iterator[Path]:
    """Copy the directory ``src`` to a temporary directory beside ``dest`` and yield it (to
    be changed in place); then replace ``dest`` by it. On any error the temporary is removed
    and ``dest`` is left as it was."""
    tmp = dest.parent / f".{dest.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def install_model(name: str, potential: str | os.PathLike, *, kind: str, description: str,
                  training: dict[str, Any], recipe: dict[str, Any], reproduce: str,
                  errors: dict[str, Any], finds: list[str] | None = None,
                  registry: str | os.PathLike | None = None) -> ModelCard:
    """Copy a potential directory into the registry as ``name`` with its card.

    Absolute paths of the build machine in ``potential.json``/``potential.in`` are replaced
    by names relative to the model directory. Written beside the target, then renamed.
    """
    from rmsearch.potentials import load_potential

    if kind not in KINDS:
        raise RMError(f"kind {kind!r}: must be one of {', '.join(KINDS)}")
    src = Path(potential)
    pot = load_potential(src)
    root = Path(registry) if registry is not None else REGISTRY_DIR
    root.mkdir(parents=True, exist_ok=True)
    with staged_copy(src, root / name) as tmp:
        _strip_build_paths(tmp, src)
        card = ModelCard(name=name, kind=kind, elements=list(pot.elements), backend=pot.backend,
                         description=description, files=_directory_files(tmp), training=training,
                         recipe=recipe, reproduce=reproduce, errors=errors, finds=list(finds or []),
                         parameters=_parameter_count(pot),
                         size_bytes=sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()))
        write_json_atomic(tmp / CARD, asdict(card))
    return card


def _strip_build_paths(directory: Path, src: Path) -> None:
    """Make the copied potential directory free of the build machine's paths."""
    meta_path = directory / "potential.json"
    meta = json.loads(meta_path.read_text())
    for key in ("model_source", "training"):
        if isinstance(meta.get(key), str):
            meta[key] = Path(meta[key]).name
    write_json_atomic(meta_path, meta)
    for text_file in directory.rglob("*.in"):
        text = text_file.read_text()
        text_file.write_text(text.replace(str(src.resolve()), "."))


def _parameter_count(pot) -> int | None:
    """Trainable parameters of a MACE model file (None for other backends)."""
    if pot.backend != "mace" or pot.model_file is None:
        return None
    from rmsearch.mace_model import load_mace_model

    return int(sum(p.numel() for p in load_mace_model(pot.model_file).parameters()))


def format_cards(cards: list[ModelCard]) -> str:
    """The table of ``rmsearch models list``."""
    rows = [("name", "kind", "backend", "elements", "parameters", "size", "description")]
    for c in cards:
        els = " ".join(c.elements) if len(c.elements) <= 8 else f"{len(c.elements)} elements"
        rows.append((c.name, c.kind, c.backend, els, str(c.parameters or "-"),
                     f"{c.size_bytes / 1024:.0f} KB", c.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)


def format_card(card: ModelCard) -> str:
    """The text of ``rmsearch models show NAME``."""
    lines = [f"{card.name}: {card.description}",
             f"kind {card.kind}, backend {card.backend}, elements {' '.join(card.elements)}",
             (f"parameters {card.parameters if card.parameters is not None else '-'}, "
              f"{card.size_bytes / 1024:.0f} KB in {len(card.files)} files, directory {card.directory}"),
             f"reproduce: {card.reproduce}"]
    if card.training:
        lines.append("training:")
        lines += [f"  {k}: {v if not isinstance(v, (list, dict)) else json.dumps(v)}"
                  for k, v in card.training.items()]
    if card.recipe:
        lines.append(f"recipe: {json.dumps(card.recipe)}")
    if card.errors:
        lines.append("held-out errors:")
        lines += [f"  {k}: {v}" for k, v in card.errors.items()]
    if card.finds:
        lines.append("finds:")
        lines += [f"  - {f}" for f in card.finds]
    lines.append("files (SHA-256):")
    lines += [f"  {rel}  {digest}" for rel, digest in card.files.items()]
    return "\n".join(lines)
