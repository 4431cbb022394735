"""gmcl.plots: the accuracy matrix with unmeasured cells, a run's two figures, the ± sd band, and
the curves of experiments.compare and experiments.paper_table (like protocol with like)."""

import json
import os

import numpy as np

from experiments import compare
from experiments import paper_table as pt
from gmcl import plots


def _image(path):
  import matplotlib.image  # pylint: disable=import-outside-toplevel
  return matplotlib.image.imread(str(path))


def test_matrix_array_marks_unmeasured_cells():
  R = plots.matrix_array([[1.0, None], [0.5, 0.25]])
  assert R.shape == (2, 2) and np.isnan(R[0, 1]) and R[1, 0] == 0.5 and R[1, 1] == 0.25


def test_plot_run_writes_the_matrix_and_the_curve(tmp_path):
  res = {"method": "dgr", "dataset": "mnist", "protocol": "per_class", "seeds": [0, 1],
         "A": [1.0, 0.8, 0.7], "A_std": [0.0, 0.05, 0.1],
         "accuracy_matrix": [[1.0, None, None], [0.7, 0.9, None], [0.6, 0.7, 0.8]]}
  paths = plots.plot_run(res, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["accuracy_matrix.png", "accuracy_curve.png"]
  for p in paths:
    assert _image(p).ndim == 3 and _image(p).shape[0] > 100
  assert plots.run_title(res) == "dgr on mnist (per_class), mean over seeds [0, 1]"


def test_the_sd_band_is_drawn_only_where_given(tmp_path):
  mean = [1.0, 0.8, 0.6]
  plots.plot_curves({"m": (mean, None)}, str(tmp_path / "line.png"))
  plots.plot_curves({"m": (mean, [0.0, 0.0, 0.0])}, str(tmp_path / "zero.png"))
  plots.plot_curves({"m": (mean, [0.0, 0.1, 0.2])}, str(tmp_path / "band.png"))
  line, zero, band = (_image(tmp_path / f"{n}.png") for n in ("line", "zero", "band"))
  assert np.array_equal(line, zero)
  assert line.shape == band.shape and not np.array_equal(line, band)


def test_compare_draws_one_figure_per_benchmark_with_finished_runs(tmp_path):
  cells = {("dgr", "split_mnist"): {"A": [1.0, 0.5], "A_std": [0.0, 0.1], "seeds": [0, 1, 2],
                                    "scenario": "class_incremental"},
           ("sft", "split_mnist"): {"error": "pending"},
           ("dgr", "permuted_mnist"): {"error": "not run"}, ("sft", "permuted_mnist"): {"na": "x"}}
  written = compare.write_curves(cells, ["split_mnist", "permuted_mnist"], ["dgr", "sft"], str(tmp_path / "t"))
  assert written == [str(tmp_path / "t_split_mnist.png")] and os.path.exists(written[0])


def test_paper_table_draws_each_protocol_apart(tmp_path):
  root = str(tmp_path / "results")
  folder = pt.results_dir("cpu", 3, "mnist", "mergan_ra", root)
  os.makedirs(folder)
  per_seed = [{"A": [1.0, 0.9 - 0.1 * s], "scores": {"A_oracle": [0.97, 0.8]}} for s in range(3)]
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump({"completed_tasks": 2, "tasks": [[0], [1]], "seeds": [0, 1, 2], "per_seed": per_seed}, f)
  unfinished = pt.results_dir("cpu", 3, "mnist", "dgr", root)
  os.makedirs(unfinished)
  with open(os.path.join(unfinished, "results.json"), "w") as f:
    json.dump({"completed_tasks": 1, "tasks": [[0], [1]], "seeds": [0], "per_seed": [{"A": [1.0]}]}, f)
  written = pt.plot_curves(str(tmp_path / "plots"), "cpu", 3, root)
  assert [os.path.basename(p) for p in written] == ["mnist_oracle.png", "mnist_real.png"]
