"""Rescoring a finished run (``loop.restore_final``, ``experiments.rescore``): the final states read
back are the run's own (its recorded scores come out again, digit for digit), and the new judges'
figures are what scoring those states directly gives."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import rescore as rescore_lib
from experiments.configs import dgr, mergan
from gmcl import evaluation, loop
from gmcl.evaluation import oracle, reverse


def _quiet(_):
  pass


def _mergan(tmp_path, seeds=2):
  c = mergan.get_config("smoke")
  c.model.gan = "mlp"
  c.data.max_tasks, c.num_seeds = 2, seeds
  c.mergan.variant, c.mergan.oracle_dir = "ra", str(tmp_path / "oracles")
  c.mergan.oracle_steps = 20
  return c


@pytest.fixture(scope="module")
def finished(mnist_data, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("rescore")
  c = _mergan(tmp)
  work = str(tmp / "run")
  results = loop.run(c, work, data=mnist_data, progress=False, log=_quiet)
  return work, results, tmp


def test_restore_final_gives_the_states_the_run_ended_with(finished, mnist_data):
  work, results, _ = finished
  before = {f: os.path.getmtime(os.path.join(work, f)) for f in os.listdir(work)}
  run = loop.restore_final(work, data=mnist_data, log=_quiet)
  assert run.seeds == [0, 1] and len(run.states) == 2
  t = len(run.sequence) - 1
  for seed, state, recorded in zip(run.seeds, run.states, results["per_seed"]):
    sample_key = jax.random.split(jax.random.PRNGKey(seed), 3)[2]  # the run's own scoring keys
    again = run.method.extra_scores(state, run.data, run.sequence, t, jax.random.fold_in(sample_key, 10_000 + t))
    for name in ("A_auxiliary_head", "A_replay_classifier", "A_oracle", "oracle_per_class"):
      assert again[name] == recorded["scores"][name][t], name
  assert {f: os.path.getmtime(os.path.join(work, f)) for f in os.listdir(work)} == before  # nothing written


def test_rescore_figures_are_the_judges_on_those_states(finished, mnist_data):
  work, results, tmp = finished
  cache = str(tmp / "judges")
  out = rescore_lib.rescore(work, ["mlp"], ["mlp"], oracle_steps=15, samples_per_class=64, reverse_steps=5,
                            reverse_samples_per_class=16, data=mnist_data, cache_dir=cache, log=_quiet)
  run = loop.restore_final(work, data=mnist_data, log=_quiet)
  d = run.config.data
  settings = oracle.OracleSettings(dataset=d.dataset, pad_to=int(d.pad_to), value_range=tuple(d.value_range),
                                   architecture="mlp", steps=15, seed=0,
                                   data_fingerprint=oracle.fingerprint(run.data.x_train, run.data.y_train))
  judge = oracle.load_or_train(settings, run.data.x_train, run.data.y_train, run.data.x_test, run.data.y_test,
                               10, cache_dir=cache, log=_quiet)
  assert out["oracle_mlp_test_accuracy"] == judge.test_accuracy
  assert out["settings"]["oracle_steps"] == {"mlp": 15}
  classes = run.sequence.seen_classes(len(run.sequence) - 1)
  sample = jax.jit(run.method.sample)
  for seed, state, p in zip(run.seeds, run.states, out["per_seed"]):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), rescore_lib.RESCORE_KEY)
    per_class = oracle.generated_accuracy(lambda k, labels, s=state: sample(s, k, labels), judge.predict, classes,
                                          jax.random.fold_in(key, 0), samples_per_class=64)
    assert p["oracle_mlp_per_class"] == {str(c): v for c, v in per_class.items()}
    assert p["A_oracle_mlp"] == np.mean(list(per_class.values()))
    assert p["A_reverse_mlp"] == reverse.reverse_accuracy(
        lambda k, labels, s=state: sample(s, k, labels), classes, run.data.x_test, run.data.y_test,
        jax.random.fold_in(key, 100), 10, architecture="mlp", steps=5, per_class=16)
  values = [p["A_oracle_mlp"] for p in out["per_seed"]]
  assert out["A_oracle_mlp"] == pytest.approx(np.mean(values), abs=1e-12)
  assert out["A_oracle_mlp_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
  assert out["run_A_oracle"] == results["scores"]["A_oracle"][-1] and out["after_task"] == 2
  assert out["workdir"] == "run" == rescore_lib.run_name(work + os.sep)  # the folder's name, not its path
  assert rescore_lib.run_name(os.curdir) == os.path.basename(os.getcwd())
  json.dumps(out)  # serialisable as written


def test_rescore_refuses_what_it_cannot_score(finished, mnist_data, tmp_path):
  work, _, _ = finished
  with pytest.raises(ValueError, match="nothing to score"):
    rescore_lib.rescore(work, [], [], data=mnist_data, log=_quiet)
  with pytest.raises(FileNotFoundError, match="holds no finished run"):
    loop.restore_final(str(tmp_path / "nothing"), data=mnist_data, log=_quiet)
  c = dgr.get_config("smoke")  # an unconditional generator: no oracle (reverse accuracy works)
  c.model.gan, c.data.max_tasks = "mlp", 2
  dgr_work = str(tmp_path / "dgr")
  loop.run(c, dgr_work, data=mnist_data, progress=False, log=_quiet)
  with pytest.raises(ValueError, match="needs a conditional generator; dgr .* has an unconditional one"):
    rescore_lib.rescore(dgr_work, ["mlp"], [], data=mnist_data, log=_quiet)
  out = rescore_lib.rescore(dgr_work, [], ["mlp"], reverse_steps=3, reverse_samples_per_class=8, data=mnist_data,
                            log=_quiet)
  assert 0.0 <= out["A_reverse_mlp"] <= 1.0 and out["A_reverse_mlp_std"] == 0.0
  with pytest.raises(Exception, match="valid: mlp, cnn"):
    rescore_lib.check_architectures("oracle", ["resnet"])


def test_oracle_steps_default_per_architecture_and_a_bad_count_is_named():
  assert [rescore_lib.oracle_steps_for(a) for a in ("mlp", "cnn")] == [2000, 6000]
  assert rescore_lib.oracle_steps_for("cnn", 15) == 15
  with pytest.raises(ValueError, match=r"oracle_steps=-1; valid: 0 \(each architecture's default"):
    rescore_lib.oracle_steps_for("mlp", -1)


def test_seeds_trained_one_after_another_keep_each_seeds_end(mnist_data, tmp_path):
  """DGM's growth trains its seeds in turn, and the next seed's checkpoints replace the last one's:
  each seed's final state is kept apart (checkpoints/finals), so the run can be scored again."""
  import shutil  # pylint: disable=import-outside-toplevel

  from experiments.configs import dgm  # pylint: disable=import-outside-toplevel
  c = dgm.get_config("smoke")
  c.model.gan, c.data.max_tasks, c.num_seeds = "mlp", 2, 2
  work = str(tmp_path / "run")
  results = loop.run(c, work, data=mnist_data, progress=False, log=_quiet)
  run = loop.restore_final(work, data=mnist_data, log=_quiet)
  assert run.seeds == [0, 1] and len(run.states) == 2
  t, predict = len(run.sequence) - 1, jax.jit(run.method.predict)
  for state, recorded in zip(run.states, results["per_seed"]):  # each seed's own end, not the last one's
    again = run.method.extra_scores(state, run.data, run.sequence, t, jax.random.PRNGKey(0))
    assert again["generator_size"] == recorded["scores"]["generator_size"][t]
    row = evaluation.evaluate_after_task(lambda xb, s=state: predict(s, xb), run.data.x_test, run.data.y_test,
                                         run.sequence, t, run.config.eval.batch_size)["row"]
    assert [float(v) for v in row] == recorded["accuracy_matrix"][t]  # the run's own scoring, digit for digit
  unequal = lambda a, b: np.shape(a) != np.shape(b) or bool(np.any(np.asarray(a) != np.asarray(b)))  # noqa: E731
  differ = jax.tree.leaves(jax.tree.map(unequal, run.states[0].generator.params, run.states[1].generator.params))
  assert any(differ)  # two seeds, two generators
  shutil.rmtree(os.path.join(work, "checkpoints", "finals"))  # a run written before the finals were kept
  with pytest.raises(ValueError, match=r"final states of seeds \[\] of \[0, 1\] are kept"):
    loop.restore_final(work, data=mnist_data, log=_quiet)
