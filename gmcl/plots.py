"""Plots of a run's accuracies (matplotlib, Agg): the accuracy matrix as a heatmap and A_t against
tasks, with a ± sd band over seeds; and several runs' A_t curves side by side.

:func:`gmcl.loop.run` writes ``accuracy_matrix.png`` and ``accuracy_curve.png`` into the workdir
after every task (``config.log.plots``); :func:`plot_run` redraws them from any results.json, and
:func:`plot_curves` draws many runs (``experiments.compare`` and ``experiments.paper_table``).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path: str) -> None:
  tmp = f"{path}.{os.getpid()}.tmp.png"  # one per process: comparisons sharing a folder may draw at once
  fig.savefig(tmp, dpi=110, bbox_inches="tight")
  os.replace(tmp, path)


def matrix_array(matrix: Sequence[Sequence[Optional[float]]]) -> np.ndarray:
  """A results.json accuracy matrix (rows may hold None: not measured) as floats, NaN for None."""
  rows = [[np.nan if v is None else float(v) for v in row] for row in matrix]
  return np.array(rows, dtype=float).reshape(len(rows), -1)


def plot_accuracy_matrix(matrix, path: str, title: str = "") -> None:
  """R[i][j] (accuracy on task j after task i) in %, each cell written in; blank where unmeasured."""
  R = 100 * matrix_array(matrix)
  plt = _pyplot()
  n_rows, n_cols = R.shape
  fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n_cols, 0.8 + 0.5 * n_rows))
  im = ax.imshow(np.ma.masked_invalid(R), vmin=0, vmax=100, cmap="viridis")
  for i in range(n_rows):
    for j in range(n_cols):
      if np.isfinite(R[i, j]):
        ax.text(j, i, f"{R[i, j]:.0f}", ha="center", va="center", fontsize=7,
                color="white" if R[i, j] < 60 else "black")
  ax.set_xticks(range(n_cols), [str(j + 1) for j in range(n_cols)])
  ax.set_yticks(range(n_rows), [str(i + 1) for i in range(n_rows)])
  ax.set_xlabel("task evaluated")
  ax.set_ylabel("after training task")
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax, label="accuracy (%)")
  _save(fig, path)
  plt.close(fig)


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Optional[Sequence[float]]]], path: str,
                title: str = "", ylabel: str = "A_t (%)") -> None:
  """One line per label: ``(A, A_std)`` (fractions) against tasks 1..T, a ± sd band where
  ``A_std`` is given (and not all zero)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.0, 3.8))
  longest = 1
  for label, (mean, std) in curves.items():
    mean = 100 * np.asarray(mean, float)
    tasks = np.arange(1, len(mean) + 1)
    longest = max(longest, len(mean))
    (line,) = ax.plot(tasks, mean, marker="o", markersize=3, label=label)
    if std is not None and np.any(np.asarray(std, float) > 0):
      sd = 100 * np.asarray(std, float)
      ax.fill_between(tasks, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
  ax.set_xlabel("task")
  ax.set_ylabel(ylabel)
  ax.set_xticks(range(1, longest + 1))
  ax.set_ylim(0, 101)
  ax.grid(alpha=0.3)
  ax.set_title(title, fontsize=9)
  if curves:
    ax.legend(fontsize=7, loc="lower left")
  _save(fig, path)
  plt.close(fig)


def run_title(results: dict) -> str:
  seeds = results.get("seeds", [results.get("seed")])
  over = f"mean over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}"
  return f"{results['method']} on {results['dataset']} ({results['protocol']}), {over}"


def plot_run(results: dict, workdir: str) -> list[str]:
  """Writes ``accuracy_matrix.png`` and ``accuracy_curve.png`` of a results.json into ``workdir``;
  returns their paths (none while no task is complete for every seed: seeds run one after another
  are averaged over the tasks all of them have finished)."""
  if not results["A"]:
    return []
  title = run_title(results)
  paths = [os.path.join(workdir, "accuracy_matrix.png"), os.path.join(workdir, "accuracy_curve.png")]
  plot_accuracy_matrix(results["accuracy_matrix"], paths[0], title)
  several = len(results.get("seeds", [0])) > 1
  plot_curves({results["method"]: (results["A"], results.get("A_std") if several else None)}, paths[1], title)
  return paths
