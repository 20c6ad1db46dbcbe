"""Label presets per kind of data (DESIGN §2, §3); every value can be overridden on the CLI.

=========  ============  ===========  ==============  ========  =============================
preset     step (A)      strains      repulsion rc    k         MACE r_max (A)
=========  ============  ===========  ==============  ========  =============================
molecule   0.10 (+-1.6)  none         0.70 A          1 eV/A^2  4.5
crystal    0.05 (+-0.8)  -0.1..0.1/11 0.75 A          1 eV/A^2  4.0 (MP-20 reference)
diamond    0.05 (+-0.8)  -0.1..0.1/11 0.75 A          1 eV/A^2  4.5 (diamond reference)
=========  ============  ===========  ==============  ========  =============================

Noise levels are ``[0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 32]`` for all presets, so a crystal
gives 11 strains x 11 levels = 121 frames per structure and a molecule 11 frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rmdata.errors import RMError
from rmdata.limits import BOUNDS, COPIES_MAX, MAX_NOISE_A
from rmdata.utils import check_finite
from rmdata.perturb import NoiseParams
from rmdata.response import LabelParams


@dataclass(frozen=True)
class Preset:
    """Noise and label parameters plus the MACE training settings of one kind of data."""

    name: str
    noise: NoiseParams
    labels: LabelParams
    config_type: str
    mace: dict = field(default_factory=dict)

    def with_overrides(self, *, k=None, levels=None, step_size=None, strains=None, rc=None,
                       copies=None, raw=None, cell_noise=None, youngs=None) -> Preset:
        """A copy with the given (non-None) parameters replaced."""
        noise = replace(self.noise, **{n: v for n, v in dict(
            levels=tuple(levels) if levels is not None else None, step_size=step_size,
            strains=tuple(strains) if strains is not None else None, copies=copies,
            cell_noise=cell_noise).items() if v is not None})
        labels = replace(self.labels, **{n: v for n, v in dict(k=k, rc=rc, raw=raw, youngs=youngs).items()
                                         if v is not None})
        check_parameters(noise, labels)
        return replace(self, noise=noise, labels=labels)

    def check_amplitude(self) -> None:
        """RMError when the largest noise, max(levels) x step size, exceeds :data:`MAX_NOISE_A`.

        Checked for the presets a dataset actually uses (a crystal's 0.05 A step allows
        levels twice as high as a molecule's 0.1 A)."""
        amplitude = max(self.noise.levels) * self.noise.step_size
        if amplitude > MAX_NOISE_A:
            raise RMError(f"--levels/--step-size: noise amplitude max(levels) x step size = {amplitude:g} A "
                          f"({self.name} preset, step {self.noise.step_size:g} A) exceeds {MAX_NOISE_A:g} A; "
                          "lower them")


def check_parameters(noise: NoiseParams, labels: LabelParams) -> None:
    """One-line RMError naming the option whose value is non-finite or out of :data:`BOUNDS`
    (the noise amplitude is checked per preset in use: :meth:`Preset.check_amplitude`)."""
    check_finite(labels.k, "--k", *BOUNDS["k"])
    check_finite(labels.rc, "--rc", *BOUNDS["rc"])
    check_finite(labels.youngs, "--youngs", *BOUNDS["youngs"])
    check_finite(noise.step_size, "--step-size", *BOUNDS["step_size"])
    for level in noise.levels:
        check_finite(level, "--levels", *BOUNDS["levels"])
    for strain in noise.strains:
        check_finite(strain, "--strains", *BOUNDS["strains"])
    if not isinstance(noise.copies, int) or not 1 <= noise.copies <= COPIES_MAX:
        raise RMError(f"--copies {noise.copies}: must be an integer in [1, {COPIES_MAX}]")
    if not noise.levels:
        raise RMError("--levels must name at least one noise level")


_MACE_COMMON = dict(num_interactions=1, num_channels=32, max_L=1, forces_weight=10.0,
                    stress_weight=100.0, max_num_epochs=50, batch_size=8, lr=0.01)

PRESETS: dict[str, Preset] = {
    "molecule": Preset("molecule", NoiseParams(step_size=0.1, strains=(), cell_noise=0.0),
                       LabelParams(rc=0.7), "rm_molecule", {**_MACE_COMMON, "r_max": 4.5}),
    "crystal": Preset("crystal", NoiseParams(step_size=0.05), LabelParams(rc=0.75), "rm_crystal",
                      {**_MACE_COMMON, "r_max": 4.0}),
    "diamond": Preset("diamond", NoiseParams(step_size=0.05), LabelParams(rc=0.75), "rm_crystal",
                      {**_MACE_COMMON, "r_max": 4.5}),
}


def get_preset(name: str) -> Preset:
    """The preset ``name`` (one-line error listing the valid names)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise RMError(f"unknown preset {name!r}; use one of: {', '.join(PRESETS)}") from None
