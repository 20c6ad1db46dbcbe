"""``rmsearch`` command line: export, launch, status, analyze, ...

Each command parses its options and calls a plain library function.
"""

from __future__ import annotations

import click

from rmdata.cliutils import CONTEXT, RMGroup, setup_logging
from rmsearch import __version__


@click.group(cls=RMGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="rmsearch")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Structure search with a response-matched potential in LAMMPS."""
    setup_logging(verbose)

from rmsearch.cli_slurm import slurm_group  # noqa: E402
main.add_command(slurm_group)

from rmsearch.cli_analyze import analyze_cmd, collect_cmd  # noqa: E402
main.add_command(analyze_cmd)
main.add_command(collect_cmd)

from rmsearch.cli_launch import launch_cmd, run_shard_cmd, status_cmd  # noqa: E402
for _cmd in (launch_cmd, status_cmd, run_shard_cmd): main.add_command(_cmd)  # noqa: E701
from rmsearch.cli_export import export_command; main.add_command(export_command)  # noqa: E402,E702
from rmsearch.cli_native import fit_native_command; main.add_command(fit_native_command)  # noqa: E402,E702
from rmsearch.cli_models import models_group; main.add_command(models_group)  # noqa: E402,E702
from rmsearch.cli_relax import relax_cmd; main.add_command(relax_cmd)  # noqa: E402,E702


if __name__ == "__main__":
    main()
