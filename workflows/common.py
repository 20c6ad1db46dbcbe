"""Shared steps of the workflows: run the real command-line tools, time them, resume.

Every workflow is a chain of the commands a user types (``rmdata make``, the
``mace_run_train`` command printed by ``rmdata mace-command``, ``rmsearch export``,
``rmsearch launch``, ``rmsearch analyze``). A step whose output already exists is skipped,
so a workflow that was interrupted continues where it stopped (``rmsearch launch``
resumes by itself).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("workflows")

THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tool(name: str) -> str:
    """Path of a console script of the running environment (``rmdata``, ``mace_run_train``, ...)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class Pipeline:
    """Runs and times the steps of one workflow in ``out``; writes ``out/steps.json``."""

    def __init__(self, out: str | os.PathLike, force: bool = False):
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.steps: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def run(self, name: str, args: list[str], done: Path | None = None, cwd: Path | None = None,
            log_file: Path | None = None) -> None:
        """Run one command; skipped when ``done`` exists (unless ``force``)."""
        cmd = [tool(args[0]), *args[1:]]
        if done is not None and done.exists() and not self.force:
            print(f"[{name}] done already ({done.relative_to(self.out)}), skipped", flush=True)
            self.steps.append({"step": name, "command": shlex.join(args), "skipped": True})
            return
        print(f"[{name}] {shlex.join(args)}", flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, **THREAD_ENV}
        if log_file is not None:
            with open(log_file, "w") as fh:
                proc = subprocess.run(cmd, cwd=cwd or self.out, env=env, stdout=fh, stderr=subprocess.STDOUT)
        else:
            proc = subprocess.run(cmd, cwd=cwd or self.out, env=env)
        wall = time.perf_counter() - t0
        self.steps.append({"step": name, "command": shlex.join(args), "wall_s": round(wall, 1)})
        if proc.returncode != 0:
            tail = ""
            if log_file is not None and log_file.exists():
                tail = "\n" + "\n".join(log_file.read_text().splitlines()[-15:])
            raise SystemExit(f"workflow step '{name}' failed (exit {proc.returncode}){tail}")
        print(f"[{name}] {wall:.1f} s", flush=True)

    def launch(self, name: str, rundir: Path, potential: str | os.PathLike, search: list[str], *,
               nruns: int, seed: int, workers: int | None = None) -> None:
        """Step ``name``: ``rmsearch launch`` of ``nruns`` starts into ``rundir`` (it resumes by
        itself). ``search``: the options that say what is searched and how, e.g.
        ``["--system", "C", "--natoms", "2-12"]``; ``workers`` None: the CLI's default."""
        cmd = ["rmsearch", "launch", "--potential", str(potential), *search, "--nruns", str(nruns),
               "--seed", str(seed), "-o", str(rundir), "--no-progress"]
        if workers:
            cmd += ["--workers", str(workers)]
        self.run(name, cmd)

    def analyze(self, name: str, rundir: Path, options: list[str]) -> dict[str, Any]:
        """Step ``name``: ``rmsearch analyze rundir *options``; returns the report data."""
        self.run(name, ["rmsearch", "analyze", str(rundir), *options])
        return read_report(rundir)

    def train(self, dataset: Path, name: str, epochs: int, channels: int, seed: int) -> Path:
        """Train MACE with the command ``rmdata mace-command`` prints; returns the model path."""
        workdir = self.out / "train"
        workdir.mkdir(exist_ok=True)
        model = workdir / f"{name}.model"
        out = subprocess.run([tool("rmdata"), "mace-command", str(dataset), "--name", name, "--epochs",
                              str(epochs), "--channels", str(channels), "--seed", str(seed)],
                             capture_output=True, text=True, check=True)
        for i, line in enumerate(out.stdout.strip().splitlines()):
            self.run(f"train{i}" if i else "train", shlex.split(line), done=model, cwd=workdir,
                     log_file=workdir / f"train{i}.log")
        return model

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write ``summary.json`` (summary + steps + total wall time) and return its path."""
        summary = {**summary, "steps": self.steps, "wall_s": round(time.perf_counter() - self.t0, 1)}
        path = self.out / "summary.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path


def workflow_parser(doc: str, out: str, shipped: str | None = None, note: str = "") -> argparse.ArgumentParser:
    """The parser of a workflow script: ``doc`` as its description, ``-o/--output/--out``
    (default ``out``) and, for a workflow that searches with a shipped model, ``--potential``
    (default None: the workflow uses ``shipped``; ``note`` adds to its help)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", "--out", dest="out", default=out, help="output folder")
    if shipped is not None:
        ap.add_argument("--potential", default=None,
                        help=f"potential directory or model:NAME (default: {shipped}{note})")
    return ap


def add_run_options(ap, search: bool = True) -> None:
    """The options every workflow shares (workers, seed, force; relaxation limits if ``search``)."""
    if search:
        ap.add_argument("--max-steps", type=int, default=1500, help="force calls per relaxation")
        ap.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                        help="model precision in search")
    ap.add_argument("--workers", type=int, default=None, help="search processes (default: cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, training and search")
    ap.add_argument("--force", action="store_true", help="redo steps whose outputs exist")


def write_page(out: Path, title: str, summary: dict[str, Any], figure: str, body: str,
               skip: tuple[str, ...] = ("steps",)) -> Path:
    """``out/report.html``: the summary as a list, the workflow's figure, then ``body`` (HTML)."""
    import html

    facts = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v if isinstance(v, str) else json.dumps(v, default=str))}"
                    "</li>" for k, v in summary.items() if k not in skip)
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:2px 8px}}</style></head>
<body><h1>{html.escape(title)}</h1><ul>{facts}</ul>
<img src="{figure}" alt="{html.escape(title)}" style="max-width:100%">
{body}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def read_report(rundir: Path) -> dict[str, Any]:
    """The analysis report data of a run directory (``report/report.json``)."""
    return json.loads((rundir / "report" / "report.json").read_text())
