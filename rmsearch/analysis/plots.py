"""PNG plots of an analysis (matplotlib, Agg backend, no display needed).

Each function writes one PNG atomically and returns its path. Energies in eV/atom,
volumes in A^3/atom.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rmdata.utils import atomic_output
from rmsearch.analysis.hull import HullResult
from rmsearch.analysis.score import ClusterScore

DPI = 110


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def plot_energy_volume(energies: Sequence[float], volumes: Sequence[float], spacegroups: Sequence[int],
                       path: str | os.PathLike, max_legend: int = 12) -> Path:
    """Energy vs volume per atom of all valid converged runs, coloured by space group (symprec 1e-2)."""
    e, v, sg = np.asarray(energies, float), np.asarray(volumes, float), np.asarray(spacegroups, int)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    common = [g for g, _ in Counter(sg.tolist()).most_common(max_legend)]
    cmap = plt.get_cmap("tab20")
    for k, g in enumerate(sorted(common)):
        m = sg == g
        ax.scatter(v[m], e[m], s=14, alpha=0.75, color=cmap(k % 20), label=f"SG {g} ({m.sum()})")
    rest = ~np.isin(sg, common)
    if rest.any():
        ax.scatter(v[rest], e[rest], s=10, alpha=0.5, color="0.6", label=f"other ({rest.sum()})")
    ax.set_xlabel("volume per atom (Å$^3$/atom)")
    ax.set_ylabel("energy per atom (eV/atom)")
    ax.set_title("Energy vs volume of converged valid runs")
    if len(e):
        ax.legend(fontsize=7, ncol=2, loc="best", title="space group (hits)", title_fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_energy_histogram(energies: Sequence[float], path: str | os.PathLike) -> Path:
    """Histogram of energy per atom relative to the lowest (meV/atom)."""
    e = np.asarray(energies, float)
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(e):
        rel = (e - e.min()) * 1000.0
        ax.hist(rel, bins=min(60, max(10, len(e) // 5)), color="tab:blue", edgecolor="white")
    ax.set_xlabel("energy per atom above the lowest (meV/atom)")
    ax.set_ylabel("runs")
    ax.set_title(f"Energy distribution of {len(e)} converged valid runs")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_hits(scores: Sequence[ClusterScore], path: str | os.PathLike, top: int = 30) -> Path:
    """Hit counts of the top clusters in rank order, labelled by formula and space group."""
    shown = list(scores)[:top]
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(shown) + 2), 4.2))
    x = np.arange(len(shown))
    ax.bar(x, [s.hits for s in shown], color="tab:green")
    ax.set_xticks(x, [f"#{s.cluster_id} {s.formula} {s.spacegroup_symbol}" for s in shown],
                  rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("hits (independent runs)")
    ax.set_title(f"Hit counts of the top {len(shown)} clusters (rank order)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_hull(hull: HullResult, labels: Sequence[str], path: str | os.PathLike) -> Path:
    """Pseudo convex hull: E_ex vs fraction (binary) or a composition triangle (ternary)."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    vert = np.zeros(len(hull.e_ex), bool)
    vert[hull.vertices] = True
    if len(hull.elements) == 2:
        x = hull.fractions[:, 0]  # fraction of the first element
        ax.scatter(x[~vert], hull.e_ex[~vert], s=14, color="0.55", alpha=0.7, label="above hull")
        order = np.argsort(x[vert])
        ax.plot(x[vert][order], hull.e_ex[vert][order], "-o", color="tab:red", ms=6, label="hull vertices")
        for n, k in enumerate(np.flatnonzero(vert)[np.argsort(x[vert])]):  # alternate below/above: less overlap
            ax.annotate(labels[k], (x[k], hull.e_ex[k]), textcoords="offset points",
                        xytext=(3, -12 if n % 2 == 0 else 6), fontsize=8)
        ax.set_xlabel(f"atom fraction x of {hull.elements[0]} in "
                      f"{hull.elements[0]}$_x${hull.elements[1]}$_{{1-x}}$")
        ax.set_ylabel("pseudo excess energy $E_{ex}$ (eV/atom)")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.grid(alpha=0.3)
    else:
        f = hull.fractions
        xy = np.column_stack([f[:, 1] + 0.5 * f[:, 2], np.sqrt(3) / 2 * f[:, 2]])
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.clip(hull.e_hull, 0, None), cmap="viridis_r", s=22,
                        edgecolor="k", linewidth=0.3)
        ax.scatter(xy[vert, 0], xy[vert, 1], s=70, facecolor="none", edgecolor="tab:red", label="hull vertices")
        pd = hull.phase_diagram
        for facet in pd.facets:  # tie lines of the lower hull
            fr = np.array([[pd.qhull_entries[i].composition.get_atomic_fraction(el) for el in hull.elements]
                           for i in facet])
            pts = np.column_stack([fr[:, 1] + 0.5 * fr[:, 2], np.sqrt(3) / 2 * fr[:, 2]])
            ax.plot(pts[[0, 1, 2, 0], 0], pts[[0, 1, 2, 0], 1], color="tab:red", lw=0.6, alpha=0.6, zorder=0)
        for k in np.flatnonzero(vert):
            if np.count_nonzero(f[k] > 1e-9) > 1:  # the corners are labelled by element below
                ax.annotate(labels[k], xy[k], textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.plot([0, 1, 0.5, 0], [0, 0, np.sqrt(3) / 2, 0], color="k", lw=0.8)
        for (px, py), el in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], hull.elements):
            ax.annotate(el, (px, py), textcoords="offset points", xytext=(-4, -14 if py == 0 else 6), fontsize=10)
        fig.colorbar(sc, ax=ax, label="distance above hull (eV/atom)")
        ax.set_aspect("equal")
        ax.axis("off")
    ax.set_title(f"Pseudo convex hull {'-'.join(hull.elements)}")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
