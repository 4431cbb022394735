"""benchmarks/paper_gpu.sh, the accelerator script, on its CPU path at smoke scale: data from an
arrays file only, several seeds per run, results packed in results/'s layout (readable by
experiments.paper_table), a summary, and a refusal when the arrays file is missing."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

from experiments import paper_table as pt
from experiments.configs import common, dgm, dgr, mergan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "paper_gpu.sh")


def test_paper_argument_is_each_configs_official_default():
  for module, args in ((mergan, "variant=ra"), (mergan, "variant=jr,dataset=svhn_cropped"),
                       (dgm, "variant=dgma"), (dgr, "")):
    plain = module.get_config(args or None)
    assert module.get_config(",".join(filter(None, (args, "paper")))).to_dict() == plain.to_dict()
  assert mergan.get_config("paper").train.generator_steps == 4001
  with pytest.raises(ValueError, match="give at most one of"):
    common.parse_args("paper,cpu")


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
  from gmcl.data import prepare
  path = str(tmp_path_factory.mktemp("arrays") / "mnist.npz")
  assert prepare.main(["mnist", "--export_npz", path]) == 0
  return path


@pytest.mark.parametrize("run,tasks,score,extra", [
    # the first two tasks, fully connected GAN: the script's every step, in the fast tier
    ("dgr", 2, "A", "--config.data.max_tasks=2 --config.model.gan=mlp"),
    pytest.param("mergan_ra", 10, "A_oracle", "", marks=pytest.mark.slow)])  # the GPU's first run, whole
def test_script_runs_at_smoke_scale_from_arrays_and_packs_results(tmp_path, arrays, run, tasks, score, extra):
  out, work = tmp_path / "out", tmp_path / "work"
  env = dict(os.environ, RUNS=run, SEEDS="2", SCHEDULE="smoke", WORK=str(work), PYTHON=sys.executable,
             BUDGET_S="500", TFDS_DATA_DIR=str(tmp_path / "no_tfds"),  # TFDS would find nothing
             EXTRA=extra)
  proc = subprocess.run(["bash", SCRIPT, str(out), arrays], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = (out / "summary.txt").read_text()
  assert "backend cpu" in summary and f"{run}: exit status 0" in summary
  with tarfile.open(out / "paper_gpu.tgz") as tar:
    tar.extractall(tmp_path / "results", filter="data")
  res = pt.read_results(pt.results_dir("smoke", 2, "mnist", run, str(tmp_path / "results")))
  assert res["seeds"] == [0, 1] and res["completed_tasks"] == len(res["tasks"]) == tasks
  assert res["config"]["data"]["arrays"] == arrays
  assert pt.cell(res, score, tasks, True).count("±") == 1
  with tarfile.open(out / "logs.tgz") as tar:
    assert [os.path.basename(n) for n in tar.getnames() if n.endswith(".log")] == [f"{run}.log"]
  timings = json.loads((work / "smoke_2seeds" / run / "timings.json").read_text())
  assert timings["backend"] == "cpu"


def test_script_refuses_a_missing_arrays_file(tmp_path):
  proc = subprocess.run(["bash", SCRIPT, str(tmp_path / "out"), str(tmp_path / "none.npz")], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and "--export_npz" in proc.stderr
