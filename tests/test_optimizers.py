"""Step rules of the relaxer (rmsearch.optimizers) on functions with known minima."""

from __future__ import annotations

import numpy as np
import pytest

from rmsearch.optimizers import OPTIMIZERS, Fire2, FireParameters, LBFGS, make_step_rule


def _minimise(rule, grad, r0, fmax=1e-8, steps=5000):
    r = r0.copy()
    for k in range(steps):
        g = -grad(r)
        f = float(np.sqrt((g**2).sum(1)).max())
        if f < fmax:
            return r, k
        r = r + rule.step(r, g, f)
    raise AssertionError(f"not converged in {steps} steps (max |g| = {f:.2e})")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_rule_finds_the_minimum_of_an_anisotropic_quadratic(name):
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    hess = q @ np.diag(np.geomspace(1.0, 30.0, 12)) @ q.T  # eV/A^2, condition number 30
    r_min = rng.normal(size=(4, 3))

    def grad(r):
        return (hess @ (r - r_min).ravel()).reshape(4, 3)

    rule = make_step_rule(name, (4, 3), FireParameters(max_step=0.3, n_min=10, a_start=0.25),
                          switch_fmax=2.0)
    r, steps = _minimise(rule, grad, r_min + rng.normal(size=(4, 3)))
    assert np.abs(r - r_min).max() < 1e-7
    if name == "lbfgs":  # a quasi-Newton method needs far fewer steps than FIRE here
        assert steps < 60


def test_lbfgs_steps_are_capped_per_row_and_downhill():
    rule = LBFGS(memory=5, alpha=70.0, max_step=0.2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        r, g = rng.normal(size=(6, 3)), 1e3 * rng.normal(size=(6, 3))  # huge, inconsistent forces
        dr = rule.step(r, g, 1e3)
        assert np.sqrt((dr**2).sum(1)).max() <= 0.2 + 1e-12
        assert np.vdot(dr, g) > 0


def test_fire2_step_back_is_half_the_last_capped_step():
    """After a huge force the velocity is huge but the step was capped; going back must undo
    half of that step, never -dt v / 2 (which threw cells arbitrarily far)."""
    p = FireParameters(max_step=0.3, n_min=10, a_start=0.25)
    rule = Fire2((4, 3), p)
    g = np.zeros((4, 3))
    g[0, 0] = 1e6  # eV/A, overlapping atoms
    first = rule.step(np.zeros((4, 3)), g, 1e6)
    assert np.linalg.norm(first) == pytest.approx(0.3)
    second = rule.step(first, -g, 1e6)  # now uphill: P = F.v < 0
    # half of the capped first step back, plus a new step that is itself capped
    assert np.linalg.norm(second - (-0.5 * first)) <= 0.3 + 1e-12
    assert np.linalg.norm(second) <= 0.45 + 1e-12  # the old rule moved 0.5 * dt * |v| ~ 5e3 here


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_step_rule("bfgs", (2, 3), FireParameters())
