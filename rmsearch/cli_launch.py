"""``rmsearch launch``, ``rmsearch status`` and ``rmsearch run-shard``: parse, then call
:mod:`rmsearch.runner` / :mod:`rmsearch.shards`. The search options of ``launch`` come from
:class:`rmsearch.options.SearchOptions`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from rmdata.cliutils import CONTEXT, WORKERS, FiniteFloat
from rmdata.errors import RMError
from rmsearch.cli_slurm import options_from_cli, slurm_launch_options, submit_from_cli
from rmsearch.options import OPTION_NAMES, parse_cli_values, search_click_options
from rmsearch.pool import default_workers
from rmsearch.records import FINISHED_STATUSES
from rmsearch.runner import launch, rundir_status
from rmsearch.shards import run_shard


def _status_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _print_total(status: dict) -> None:
    click.echo(f"run directory {status['rundir']}: {status['done']}/{status['nruns']} done, "
               f"{status['remaining']} remaining; converged {status['converged']}, "
               f"not converged {status['not_converged']}, failed {status['failed']}")
    click.echo(f"status counts: {_status_line(status['status_counts'])}")
    if status["best_energy_per_atom"] is not None:
        click.echo(f"best: {status['best_energy_per_atom']:.6f} eV/atom "
                   f"(run {status['best_run_id']}, {status['best_formula']})")
    if status.get("running"):
        click.echo(f"running: {status['running']}")
    for problem in status.get("problems", []):
        click.echo(f"problem: {problem}")


@click.command("launch", context_settings=CONTEXT)
@click.option("-o", "--output", "--out", "rundir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (created; an existing one is resumed: only missing run ids run).")
@click.option("--potential", "potential_spec",
              help="Potential directory from 'rmsearch export' / 'rmsearch fit-native', or a shipped "
                   "model as model:NAME ('rmsearch models list'); required for a new run directory.")
@click.option("--nruns", type=click.IntRange(1, 10**7),
              help="Number of runs, ids 0..nruns-1 (required for a new run directory; on resume it may grow, "
                   "never shrink).")
@click.option("--workers", type=WORKERS, default=None,
              help=f"Worker processes, one thread each [default: cores available, {default_workers()}].")
@search_click_options
@click.option("--device", default="cpu", show_default=True,
              help="cpu: the worker pool, one structure per model call; cuda (or cuda:N): the batched "
                   "path, many relaxations per MACE model call in one process (mace potentials).")
@click.option("--batch", type=click.IntRange(1, 100000),
              help="Relaxations in flight per model call on the batched path; on a CPU, --batch N "
                   "selects the batched path [default: 128 with --device cuda].")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (rate, ETA) on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--scheduler", type=click.Choice(["local", "slurm"]), default="local",
              help="local: a pool of worker processes here; slurm: a job array of 'run-shard' tasks "
                   "(options below, see 'rmsearch slurm --help').")
@slurm_launch_options
@click.option("--dry-run", is_flag=True, help="With --scheduler slurm: only write RUNDIR/slurm/job.sh.")
@click.option("--resume", is_flag=True,
              help="Require RUNDIR to exist (an existing RUNDIR is resumed with or without this flag).")
def launch_cmd(rundir: Path, potential_spec: str | None, nruns: int | None, workers: int | None,
               progress: bool, as_json: bool, scheduler: str, dry_run: bool, resume: bool,
               device: str, batch: int | None, **flags) -> None:
    """Relax NRUNS random starts with a pool of worker processes into RUNDIR, or resume it.

    Options left out on a resume keep the values stored in RUNDIR/config.json; options that
    change results (seed, starts, tolerances, potential contents) must match them.
    """
    from rmsearch.registry import resolve_potential

    if resume and not (rundir / "config.json").is_file():
        raise RMError(f"{rundir}: --resume needs an existing run directory (no config.json there)")
    potential = resolve_potential(potential_spec)
    slurm_flags = {k: flags.pop(k) for k in list(flags) if k not in OPTION_NAMES}
    search = parse_cli_values(flags)
    if scheduler == "slurm":
        from rmsearch.slurm import prepare_search

        if workers is not None:
            raise RMError("--workers applies to --scheduler local; a SLURM task runs one process")
        if device != "cpu" or batch is not None:
            raise RMError("--device cuda / --batch apply to --scheduler local; SLURM tasks relax one "
                          "structure at a time")
        options_from_cli(rundir, **slurm_flags)  # a bad profile or --time: an error before RUNDIR exists
        prepare_search(rundir, potential=potential, nruns=nruns, **search)
        submit_from_cli(rundir, dry_run=dry_run, **slurm_flags)
        return
    given = sorted(k for k, v in slurm_flags.items() if v is not None) + (["dry_run"] if dry_run else [])
    if given:
        raise RMError(f"--{given[0].replace('_', '-')} applies to --scheduler slurm only")
    summary = launch(rundir, potential=potential, nruns=nruns, workers=workers, progress=progress,
                     device=device, batch=batch, **search)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        _fail_if_all_failed(summary, rundir)
        return
    rate = f" ({summary['runs_per_s']} runs/s)" if summary["runs"] else ""
    click.echo(f"this launch: {summary['runs']} runs in {summary['wall_s']:.1f} s{rate}; "
               f"{_status_line(summary['status_counts'])}")
    _print_total(summary["total"])
    _fail_if_all_failed(summary, rundir)


def _fail_if_all_failed(summary: dict, rundir: Path) -> None:
    """RMError (exit status 2) when this launch ran runs and none converged or ended not_converged."""
    counts = summary["status_counts"]
    ok = sum(n for s, n in counts.items() if s in FINISHED_STATUSES)
    if summary["runs"] and not ok:
        raise RMError(f"{rundir}: all {summary['runs']} runs of this launch failed "
                      f"({_status_line(counts)}); see the error records with 'rmsearch status {rundir}'")


@click.command("status", context_settings=CONTEXT)
@click.argument("rundir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_cmd(rundir: Path, as_json: bool) -> None:
    """Show done / failed / remaining runs of RUNDIR, counts per status and the best energy."""
    status = rundir_status(rundir)
    table = None
    if (rundir / "slurm" / "jobs.json").is_file():  # submitted as a SLURM array: per-task view too
        from rmsearch import slurm

        try:
            tasks = slurm.slurm_status(rundir)
            status["slurm"] = [dataclasses.asdict(t) for t in tasks]
            table = slurm.format_status(tasks)
        except RMError as exc:
            status["slurm"] = table = f"scheduler state unavailable ({exc})"
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    _print_total(status)
    if table:
        click.echo(table)


@click.command("run-shard", context_settings=CONTEXT)
@click.argument("rundir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", type=click.IntRange(min=0), required=True,
              help="This task's index i: runs the ids r with r % ntasks == i.")
@click.option("--ntasks", type=click.IntRange(min=1), required=True, help="Number of tasks N.")
@click.option("--run-timeout", "run_timeout_s", type=FiniteFloat(0),
              help="Wall-time limit of one relaxation in s (0 = none); a run past it is recorded as "
                   "'timeout' and this process restarts itself on the remaining runs "
                   "[default: the launch's, from RUNDIR/config.json].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run_shard_cmd(rundir: Path, task: int, ntasks: int, run_timeout_s: float | None, as_json: bool) -> None:
    """Run, in this one process, the missing run ids of shard TASK of NTASKS into
    RUNDIR/shards/task-<TASK>.jsonl (what a SLURM array task runs)."""
    import sys

    restart = [sys.executable, "-c", "from rmsearch.cli import main; main()", "run-shard", str(rundir),
               "--task", str(task), "--ntasks", str(ntasks)]
    if run_timeout_s is not None:
        restart += ["--run-timeout", repr(run_timeout_s)]
    if as_json:
        restart.append("--json")
    summary = run_shard(rundir, task, ntasks, run_timeout_s=run_timeout_s, restart_argv=restart)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"task {task}/{ntasks}: {summary['runs']} runs in {summary['wall_s']:.1f} s; "
                   f"{_status_line(summary['status_counts'])}")
