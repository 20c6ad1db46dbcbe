"""Valid ranges of the ``rmdata make`` parameters, shared by the library and the command
line (a module without heavy imports, so that the command line starts fast)."""

from __future__ import annotations

#: Valid ranges of the overridable parameters, ``(low, high, low_open, high_open)``; the
#: command line uses the same ones. Wider values give no useful labels and, for ``rc``,
#: ``strains`` near -1 and huge displacements, neighbour lists that never finish.
BOUNDS = {
    "k": (0.0, 1e4, True, False),            # eV/A^2
    "levels": (0.0, 1000.0, False, False),   # dimensionless multiples of step_size
    "step_size": (0.0, 1.0, False, False),   # A
    "strains": (-0.5, 0.5, False, False),    # isotropic cell strain
    "rc": (0.0, 3.0, False, False),          # A
    "youngs": (0.0, 1e3, True, False),       # eV/A^3
}
COPIES_MAX = 1000
#: Largest noise amplitude max(levels) * step_size (A); the presets use at most 3.2 A.
MAX_NOISE_A = 5.0
