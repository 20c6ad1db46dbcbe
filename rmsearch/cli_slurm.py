"""``rmsearch slurm ...`` commands and the option bundle for ``launch --scheduler slurm``.

``rmsearch slurm submit RUNDIR`` submits (or, run again, resubmits the unfinished tasks of)
an initialised run directory; ``status``, ``cancel``, ``check`` and ``profile`` do what
they say. :func:`slurm_launch_options` adds the same submission options to another
command, and :func:`submit_from_cli` turns their values into a submission.
"""

from __future__ import annotations

from pathlib import Path

import click

from rmdata.cliutils import CONTEXT, RMGroup
from rmdata.errors import RMError
from rmsearch import slurm, slurm_options


#: The ``#SBATCH`` options that both a submission and a site profile take, defined once
#: (a click option decorator makes a new option each time it is applied).
PARTITION = click.option("--partition", default=None, help="SLURM partition.")
ACCOUNT = click.option("--account", default=None, help="SLURM account to charge.")
TIME = click.option("--time", "time_limit", default=None,
                    help="Wall-time limit per task (minutes, HH:MM:SS or D-HH:MM:SS).")
MEM = click.option("--mem", default=None, help="Memory per task, e.g. 2G.")
EXTRA_SBATCH = click.option("--extra-sbatch", default=None,
                            help='More sbatch options, e.g. "--qos=debug --constraint=cpu".')


def slurm_launch_options(func):
    """Decorator: the SLURM options of ``launch``/``slurm submit`` (values ``None`` = not given)."""
    options = [
        click.option("--profile", "slurm_profile", metavar="NAME_OR_FILE", default=None,
                     help="Site profile: a file, or NAME for $RMSEARCH_CONFIG/profiles/NAME.toml "
                          "(default config dir ~/.config/rmsearch)."),
        click.option("--array-size", type=click.IntRange(min=1), default=None,
                     help="Number of array tasks N; task i runs run ids i, i+N, ... "
                          "[default: nruns/100, at most 1000; fixed once submitted]"),
        PARTITION,
        ACCOUNT,
        TIME,
        click.option("--cpus-per-task", type=click.IntRange(min=1), default=None,
                     help="Cores per task [default: 1; one task is one serial LAMMPS process]."),
        MEM,
        click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
                     help="At most this many tasks at once (--array=...%M)."),
        EXTRA_SBATCH,
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


def options_from_cli(rundir: str | Path, *, slurm_profile: str | None = None,
                     array_size: int | None = None, partition: str | None = None,
                     account: str | None = None, time_limit: str | None = None,
                     cpus_per_task: int | None = None, mem: str | None = None,
                     max_concurrent: int | None = None,
                     extra_sbatch: str | None = None) -> slurm_options.SlurmOptions:
    """The validated submission options (run dir, profile, flags); RMError names a bad one.

    Writes nothing, so ``launch --scheduler slurm`` checks them before creating RUNDIR.
    """
    overrides = dict(array_size=array_size, partition=partition, account=account, time=time_limit,
                     cpus_per_task=cpus_per_task, mem=mem, max_concurrent=max_concurrent,
                     extra_sbatch=slurm_options.split_sbatch_options(extra_sbatch) or None)
    return slurm.resolve_options(rundir, slurm_profile, overrides).validate()


def submit_from_cli(rundir: str | Path, *, dry_run: bool = False, **flags) -> str | None:
    """Resolve options (:func:`options_from_cli`) and call :func:`rmsearch.slurm.submit_slurm`.

    Prints what happened; returns the job id (``None`` for a dry run or nothing to do).
    """
    options = options_from_cli(rundir, **flags)
    job_id = slurm.submit_slurm(rundir, options, dry_run=dry_run)
    script = Path(rundir) / "slurm" / "job.sh"
    if dry_run:
        click.echo(f"wrote {script} (not submitted; submit with 'sbatch {script}')")
    elif job_id is None:
        click.echo(f"{rundir}: nothing to submit (all runs done or their tasks still queued/running)")
    else:
        sub = slurm.load_jobs(rundir)["submissions"][-1]
        click.echo(f"submitted job {job_id}: {len(sub['tasks'])} task(s), {sub['missing_runs']} run(s) "
                   f"to do; follow with 'rmsearch slurm status {rundir}'")
    return job_id


@click.group("slurm", cls=RMGroup, context_settings=CONTEXT)
def slurm_group() -> None:
    """Run a search on a SLURM cluster as a job array."""


@slurm_group.command("submit", context_settings=CONTEXT)
@click.argument("rundir", type=click.Path(file_okay=False, path_type=Path))
@slurm_launch_options
@click.option("--dry-run", is_flag=True, help="Only write RUNDIR/slurm/job.sh.")
def submit_cmd(rundir: Path, dry_run: bool, **flags) -> None:
    """Submit RUNDIR as a job array; run again to resubmit only unfinished tasks."""
    submit_from_cli(rundir, dry_run=dry_run, **flags)


@slurm_group.command("status", context_settings=CONTEXT)
@click.argument("rundir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def status_cmd(rundir: Path) -> None:
    """Per-task state from the scheduler and from the shards."""
    click.echo(slurm.format_status(slurm.slurm_status(rundir)))


@slurm_group.command("cancel", context_settings=CONTEXT)
@click.argument("rundir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", "tasks", type=click.IntRange(min=0), multiple=True,
              help="Cancel only this task (repeatable) [default: all active tasks].")
def cancel_cmd(rundir: Path, tasks: tuple[int, ...]) -> None:
    """scancel the queued/running tasks of RUNDIR; finished runs stay in the shards."""
    done = slurm.cancel_slurm(rundir, list(tasks) or None)
    click.echo(f"cancelled {' '.join(done)}" if done else "no active task to cancel")


@slurm_group.command("check", context_settings=CONTEXT)
@click.argument("rundir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def check_cmd(rundir: Path) -> None:
    """Validate RUNDIR/slurm/job.sh with 'sbatch --test-only' (submits nothing)."""
    script = rundir / "slurm" / "job.sh"
    if not script.is_file():
        raise RMError(f"{script} not found; write it with 'rmsearch slurm submit {rundir} --dry-run'")
    click.echo(slurm.sbatch_test_only(script))


@slurm_group.command("profile", context_settings=CONTEXT)
@click.argument("name")
@PARTITION
@ACCOUNT
@click.option("--qos", default=None, help="SLURM quality of service.")
@TIME
@MEM
@click.option("--module", "modules", multiple=True, help="'module load' argument (repeatable).")
@click.option("--setup", multiple=True, help="Shell line run first, e.g. 'source ~/rm/bin/activate' (repeatable).")
@EXTRA_SBATCH
@click.option("--launcher", default=None, help="Put this in front of the task command, e.g. srun.")
@click.option("--python", "python", default=None, help="Python on the compute nodes [default: this one].")
@click.option("--show", is_flag=True, help="Print the stored profile NAME instead of writing it.")
def profile_cmd(name: str, show: bool, time_limit: str | None, extra_sbatch: str | None, modules, setup,
                **fields) -> None:
    """Write the site profile NAME to the config dir (use it with --profile NAME)."""
    if show:
        path = slurm_options.find_profile(name)
        slurm_options.load_profile(path)  # validates
        click.echo(f"# {path}\n" + path.read_text())
        return
    data = {k: v for k, v in fields.items() if v is not None}
    data.update(time=time_limit, modules=list(modules), setup=list(setup),
                extra_sbatch=slurm_options.split_sbatch_options(extra_sbatch))
    opts = slurm_options.SlurmOptions.from_dict({k: v for k, v in data.items() if v is not None}, "command line")
    click.echo(f"wrote {slurm_options.save_profile(name, opts)}")
