"""Step rules of the relaxer: FIRE (ASE's flavour), FIRE 2.0, L-BFGS, and FIRE 2.0 then L-BFGS.

Each rule works on one flat set of generalised coordinates ``r`` (an (m, 3) array: the
atoms in the undeformed frame, then the three rows of the scaled cell variable ``N log F``,
see :mod:`rmsearch.relax`) and the generalised forces ``g = -dE/dr`` at ``r``. A call to
``step(r, g, max_force)`` (max_force: the largest atom's |g|, eV/A) returns the displacement ``dr`` to add to ``r``; rules keep their own
state (velocities, time step, L-BFGS memory) between calls, so one rule object serves one
relaxation.

Every displacement is capped: for the FIRE rules the norm of the whole step is at most
``max_step`` (as in ASE's FIRE), for L-BFGS the longest row (one atom, or one cell row) is at
most ``max_step``. Units follow ``r``: A for atoms, and (dimensionless log strain) x N for
the cell.

Why FIRE 2.0 then L-BFGS is the default (``benchmarks/bench_relax.py``, 50 random C8
starts, BENCHMARKS.md): FIRE's inertia copes with the wild first steps from a random
start (overlapping atoms, forces of tens of eV/A, a cell far from its size), where a
quasi-Newton step would jump; once max |F| falls below ``switch_fmax`` the structure is in a
basin, where L-BFGS converges in far fewer force calls than FIRE's slow tail. Measured:
43 force calls per relaxation against 86 (FIRE 2.0) and 103 (ASE FIRE), with a mean final
energy below ASE's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Names accepted by :func:`make_step_rule`.
OPTIMIZERS = ("fire2-lbfgs", "fire2", "fire", "lbfgs")
#: Cap on the longest row of an L-BFGS step (A), as ASE's LBFGS maxstep.
LBFGS_MAX_STEP = 0.2


#: FIRE parameters that depend on the flavour, for each flavour: ASE's FIRE ("fire", ASE's
#: own values) and FIRE 2.0 (every other rule: "fire2", and "fire2-lbfgs", "lbfgs", whose
#: L-BFGS step cap derives from max_step). max_step in A, n_min steps, a_start dimensionless.
FIRE_FLAVOUR_DEFAULTS = {
    "fire": {"max_step": 0.2, "n_min": 5, "a_start": 0.1},
    "fire2": {"max_step": 0.3, "n_min": 10, "a_start": 0.25},
}


def fire_flavour(optimizer: str) -> str:
    """The key of :data:`FIRE_FLAVOUR_DEFAULTS` for the relaxation method ``optimizer``."""
    return "fire" if optimizer == "fire" else "fire2"


@dataclass
class FireParameters:
    """FIRE parameters: time steps dt, dt_max; max_step (A, cap on the step norm); n_min
    steps downhill before dt grows; f_inc, f_dec (dt growth and cut); a_start, f_a (mixing).

    max_step, n_min and a_start left None take the defaults of a flavour
    (:data:`FIRE_FLAVOUR_DEFAULTS`, :meth:`fill_defaults`): ASE's FIRE here.
    """

    dt: float = 0.1
    dt_max: float = 1.0
    max_step: float | None = None
    n_min: int | None = None
    f_inc: float = 1.1
    f_dec: float = 0.5
    a_start: float | None = None
    f_a: float = 0.99

    def __post_init__(self) -> None:
        self.fill_defaults("fire")

    def fill_defaults(self, optimizer: str) -> None:
        """Set max_step, n_min and a_start left None to the defaults of ``optimizer``'s flavour."""
        for name, value in FIRE_FLAVOUR_DEFAULTS[fire_flavour(optimizer)].items():
            if getattr(self, name) is None:
                setattr(self, name, value)


def _cap_norm(dr: np.ndarray, max_step: float) -> np.ndarray:
    """Scale ``dr`` so that its norm is at most ``max_step``."""
    norm = float(np.sqrt(np.vdot(dr, dr)))
    return dr * (max_step / norm) if norm > max_step else dr


class Fire:
    """FIRE as ASE implements it (Bitzek et al., PRL 97, 170201, 2006): explicit Euler,
    velocity mixed towards the force before the update, velocities zeroed uphill.
    With ASE's parameters it follows ASE's FIRE step for step."""

    def __init__(self, shape: tuple[int, int], p: FireParameters):
        self.p = p
        self.v = np.zeros(shape)
        self.dt, self.a, self.n_pos = p.dt, p.a_start, 0
        self.first = True

    def step(self, r: np.ndarray, g: np.ndarray, max_force: float) -> np.ndarray:
        p = self.p
        if not self.first:
            if float(np.vdot(g, self.v)) > 0.0:
                gnorm = np.sqrt(np.vdot(g, g))
                self.v = (1.0 - self.a) * self.v + self.a * g / max(gnorm, 1e-300) * np.sqrt(
                    np.vdot(self.v, self.v))
                if self.n_pos > p.n_min:
                    self.dt = min(self.dt * p.f_inc, p.dt_max)
                    self.a *= p.f_a
                self.n_pos += 1
            else:
                self.v[:] = 0.0
                self.a = p.a_start
                self.dt *= p.f_dec
                self.n_pos = 0
        self.first = False
        self.v += self.dt * g
        return _cap_norm(self.dt * self.v, p.max_step)


class Fire2(Fire):
    """FIRE 2.0 (Guenole et al., Comput. Mater. Sci. 175, 109584, 2020): semi-implicit
    Euler, mixing after the velocity update, and on uphill motion half of the last step
    taken back, velocities zeroed, dt cut (not below 2% of the initial dt).

    The step back is half of the last *capped* displacement, never ``-dt v / 2`` of an
    uncapped velocity: after a huge force (overlapping atoms) the latter can throw the
    structure (or its cell) arbitrarily far.
    """

    def __init__(self, shape: tuple[int, int], p: FireParameters):
        super().__init__(shape, p)
        self.last = np.zeros(shape)

    def step(self, r: np.ndarray, g: np.ndarray, max_force: float) -> np.ndarray:
        p = self.p
        back = 0.0
        if not self.first:
            if float(np.vdot(g, self.v)) > 0.0:
                self.n_pos += 1
                if self.n_pos > p.n_min:
                    self.dt = min(self.dt * p.f_inc, p.dt_max)
                    self.a *= p.f_a
            else:
                self.n_pos = 0
                back = -0.5 * self.last
                self.v[:] = 0.0
                self.dt = max(self.dt * p.f_dec, 0.02 * p.dt)
                self.a = p.a_start
        self.first = False
        self.v += self.dt * g
        if self.n_pos > 0:
            gnorm = np.sqrt(np.vdot(g, g))
            vnorm = np.sqrt(np.vdot(self.v, self.v))
            self.v = (1.0 - self.a) * self.v + self.a * vnorm * g / max(gnorm, 1e-300)
        self.last = _cap_norm(self.dt * self.v, p.max_step)
        return back + self.last


class LBFGS:
    """Limited-memory BFGS (Nocedal, Math. Comp. 35, 773, 1980) without line search.

    Two-loop recursion over the last ``memory`` pairs; the initial inverse Hessian is
    ``1/alpha`` (A^2/eV) for the first step and ``s.y / y.y`` of the latest pair after.
    A pair with ``s.y <= 1e-10 |s| |y|`` (no positive curvature) clears the memory, and a direction that
    is not downhill is replaced by ``g / alpha``. The longest row of the step is capped at
    ``max_step``.
    """

    def __init__(self, memory: int = 20, alpha: float = 70.0, max_step: float = 0.2):
        self.memory, self.alpha, self.max_step = memory, alpha, max_step
        self.s: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        self.r_prev: np.ndarray | None = None
        self.g_prev: np.ndarray | None = None

    def _remember(self, r: np.ndarray, g: np.ndarray) -> None:
        if self.r_prev is None:
            return
        ds, dy = r - self.r_prev, self.g_prev - g
        if float(np.vdot(ds, dy)) > 1e-10 * float(np.sqrt(np.vdot(ds, ds) * np.vdot(dy, dy))):
            self.s.append(ds)
            self.y.append(dy)
            if len(self.s) > self.memory:
                del self.s[0], self.y[0]
        else:
            self.s.clear()
            self.y.clear()

    def step(self, r: np.ndarray, g: np.ndarray, max_force: float) -> np.ndarray:
        self._remember(r, g)
        q = g.copy()  # minus the gradient: the result is the step itself
        history = []
        for ds, dy in zip(reversed(self.s), reversed(self.y)):
            rho = 1.0 / float(np.vdot(ds, dy))
            a = rho * float(np.vdot(ds, q))
            q -= a * dy
            history.append((rho, a))
        if self.s:
            q *= float(np.vdot(self.s[-1], self.y[-1]) / np.vdot(self.y[-1], self.y[-1]))
        else:
            q /= self.alpha
        for (ds, dy), (rho, a) in zip(zip(self.s, self.y), reversed(history)):
            q += ds * (a - rho * float(np.vdot(dy, q)))
        if float(np.vdot(q, g)) <= 0.0:  # not downhill: forget and follow the force
            self.s.clear()
            self.y.clear()
            q = g / self.alpha
        longest = float(np.sqrt((q**2).sum(1)).max())
        if longest > self.max_step:
            q *= self.max_step / longest
        self.r_prev, self.g_prev = r.copy(), g.copy()
        return q


class Fire2ThenLBFGS:
    """FIRE 2.0 until max |F| < ``switch_fmax`` (eV/A) for the first time, L-BFGS from there on."""

    def __init__(self, fire: Fire2, lbfgs: LBFGS, switch_fmax: float):
        self.fire, self.lbfgs, self.switch_fmax = fire, lbfgs, switch_fmax
        self.switched = False

    def step(self, r: np.ndarray, g: np.ndarray, max_force: float) -> np.ndarray:
        self.switched = self.switched or max_force < self.switch_fmax
        return (self.lbfgs if self.switched else self.fire).step(r, g, max_force)


def make_step_rule(name: str, shape: tuple[int, int], fire: FireParameters, *,
                   memory: int = 20, alpha: float = 70.0, switch_fmax: float = 2.0):
    """A fresh step rule ``name`` (one of :data:`OPTIMIZERS`) for variables of ``shape``."""
    if name == "fire":
        return Fire(shape, fire)
    if name == "fire2":
        return Fire2(shape, fire)
    lbfgs = LBFGS(memory, alpha, min(fire.max_step, LBFGS_MAX_STEP))
    if name == "lbfgs":
        return lbfgs
    if name == "fire2-lbfgs":
        return Fire2ThenLBFGS(Fire2(shape, fire), lbfgs, switch_fmax)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
