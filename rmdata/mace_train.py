"""``rmdata-mace-train``: ``mace_run_train`` with a nonlinear readout on one-layer MACE models.

A MACE model with one interaction (no message passing, as Response Matching uses it) reads
its site energy out *linearly*: ``E_i = w . B_i``, with ``B_i`` the ``num_channels``
scalar features of the product basis (8 numbers per atom for the shipped recipes). The
readout of the paper's CACE model is a small neural network. This command trains exactly
what ``mace_run_train`` trains, with every MACE flag, except that a one-interaction model
gets MACE's own two-layer readout block (``NonLinearReadoutBlock``: ``--MLP_irreps``
hidden scalars, ``--gate`` activation; MACE's defaults 16x0e and silu), the block MACE
puts after the last layer of deeper models. The saved model is an ordinary MACE model:
``rmsearch export``, the MACE calculator and LAMMPS load it without this module.

``rmdata mace-command FILE --readout mlp`` prints the full command. RESULTS.md has what
the readout changed (molecules, Li-S).
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("rmdata.mace_train")


def _patch_one_layer_readout() -> None:
    """Make MACE's constructor give one-interaction models the nonlinear readout block."""
    from mace.modules import models  # first: importing mace sets up torch.load for e3nn's constants
    from mace.modules.blocks import LinearReadoutBlock, NonLinearReadoutBlock

    from e3nn import o3

    original = models.MACE.__init__
    if getattr(original, "_rm_mlp_readout", False):
        return

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if len(self.interactions) != 1:
            return
        linear = self.readouts[0]
        if not isinstance(linear, LinearReadoutBlock) or len(self.readouts) != 1:
            raise SystemExit("error: rmdata-mace-train: this mace-torch builds one-layer models differently; "
                             "use mace_run_train (linear readout) or mace-torch 0.3.x")
        heads = kwargs.get("heads") or ["Default"]
        hidden = (len(heads) * o3.Irreps(str(kwargs.get("MLP_irreps", "16x0e")))).simplify()
        self.readouts[0] = NonLinearReadoutBlock(linear.linear.irreps_in, hidden, kwargs["gate"],
                                                 o3.Irreps(f"{len(heads)}x0e"), len(heads))
        log.info("one-layer MACE with a nonlinear readout: %s -> %s -> %dx0e",
                 linear.linear.irreps_in, hidden, len(heads))

    init._rm_mlp_readout = True
    models.MACE.__init__ = init


def main(argv: list[str] | None = None) -> None:
    """Run ``mace_run_train`` (same arguments) with the one-layer nonlinear readout."""
    _patch_one_layer_readout()
    from mace.cli.run_train import main as mace_main

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    mace_main()


if __name__ == "__main__":
    main()
