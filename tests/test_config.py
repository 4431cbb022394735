import pytest

from experiments.configs import common, dgm, dgr, hat, joint, lgm, lsa, mergan, ogm, sft
from gmcl.config import method_config, validate_config


@pytest.mark.parametrize("module", [dgr, sft, joint])
def test_shipped_configs_validate(module):
  for arg in ("", "smoke", "demo", "dataset=fashion_mnist,protocol=split"):
    validate_config(module.get_config(arg))


@pytest.mark.parametrize("module, args", [
    (mergan, ("variant=ra", "variant=jr,cpu", "variant=sft,smoke", "dataset=svhn_cropped")),
    (dgm, ("variant=dgmw", "variant=dgma", "variant=dgmw,cpu", "variant=dgma,cpu", "smoke", "demo",
           "dataset=svhn_cropped")),
    (hat, ("dataset=mnist", "smoke")),
    (lgm, ("", "smoke", "cpu,variant=hat-bridge", "variant=ra-prototype", "dataset=fashion_mnist,protocol=split")),
    (ogm, ("", "variant=lookahead", "variant=project,cpu", "smoke,protocol=permuted")),
    (lsa, ("", "variant=parallel", "demo", "smoke,protocol=permuted"))],
    ids=["mergan", "dgm", "hat", "lgm", "ogm", "lsa"])
def test_method_configs_validate(module, args):
  for arg in args:
    validate_config(module.get_config(arg))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: setattr(c, "method", "agem"),
     r"config.method='agem'.*\['dgm', 'dgr', 'ewc', 'hat', 'icarl', 'joint', 'lgm', 'lsa', 'mergan', 'ogm', "
     r"'rwalk', 'sft', 'si'\]"),
    (lambda c: setattr(c.data, "dataset", "imagenet"), r"data.dataset='imagenet'.*mnist"),
    (lambda c: setattr(c.data, "protocol", "blurry"), r"data.protocol='blurry'.*per_class"),
    (lambda c: setattr(c.train, "n_critic", 0), r"train.n_critic=0.*>= 1"),
    (lambda c: setattr(c.dgr, "replay_ratio", "1.5"), r"replay_ratio=1.5 is outside \[0, 1\]"),
    (lambda c: setattr(c.dgr, "replay_ratio", "half"), r"replay_ratio='half'.*balanced"),
    (lambda c: setattr(c.dgr, "targets", "fuzzy"), r"dgr.targets='fuzzy'"),
    (lambda c: (setattr(c.data, "protocol", "split"), setattr(c.data, "classes_per_task", 20)),
     r"classes_per_task=20.*fewer classes than tasks"),
    (lambda c: setattr(c.data, "class_order", "0,1,2"), r"class_order.*permutation of 0..9"),
    (lambda c: setattr(c.model, "classifier", "resnet"), r"model.classifier='resnet'.*cnn"),
    (lambda c: setattr(c.model, "gan", "vae"), r"model.gan='vae'"),
    (lambda c: setattr(c.train, "chunk_mode", "fast"), r"train.chunk_mode='fast'"),
    (lambda c: setattr(c.model, "output_activation", "sigmoid"),
     r"model.output_activation='sigmoid'.*covers data.value_range=\(-1.0, 1.0\)"),
    (lambda c: setattr(c.data, "pad_to", 30), r"data.pad_to=30.*28, 32 or 64"),
    (lambda c: setattr(c.dgr, "replay_ratio", -0.1), r"replay_ratio=-0.1 is outside"),
    (lambda c: setattr(c.train, "solver_lr", float("inf")), r"train.solver_lr=inf is NaN or infinite"),
    (lambda c: setattr(c.train, "gp_weight", float("nan")), r"train.gp_weight=nan is NaN or infinite"),
    (lambda c: setattr(c.data, "max_tasks", 20), r"data.max_tasks=20.*at most the 10 tasks"),
])
def test_bad_values_name_the_key_and_the_valid_range(mutate, message):
  c = method_config("dgr")
  mutate(c)
  with pytest.raises(ValueError, match=message):
    validate_config(c)


def test_unknown_key_is_refused():
  c = method_config("dgr")
  c.train.learning_rate = 0.1
  with pytest.raises(ValueError, match=r"Unknown config key 'train.learning_rate'.*solver_lr"):
    validate_config(c)


def test_config_arguments():
  assert common.parse_args("dataset=mnist,smoke") == {"dataset": "mnist", "smoke": True}
  with pytest.raises(ValueError, match=r"Unknown config argument 'fast'.*'smoke'"):
    common.parse_args("fast")
  with pytest.raises(ValueError, match=r"Unknown dataset 'emnist'.*cifar10"):
    common.parse_args("dataset=emnist")
  smoke = dgr.get_config("smoke")
  assert smoke.model.generator_features < dgr.get_config("").model.generator_features


def test_configs_hold_the_chosen_methods_sections_only():
  from gmcl.registry import METHODS, method_spec
  shared = {"method", "seed", "num_seeds", "data", "model", "train", "parallel", "checkpoint", "log", "eval",
            "compile"}
  for name in METHODS:
    c = method_config(name)
    assert set(c.keys()) == shared | set(method_spec(name).sections()), name
  assert "mergan" not in dgr.get_config("smoke") and "dgr" in ogm.get_config("smoke")
  c = method_config("sft")
  c.dgr = method_config("dgr").dgr  # another method's section is an unknown key
  with pytest.raises(ValueError, match=r"Unknown config key 'dgr'"):
    validate_config(c)
  c = method_config("ogm")
  del c["dgr"]
  with pytest.raises(ValueError, match=r"lacks the sections \['dgr'\] that method 'ogm' reads"):
    validate_config(c)


def test_config_imports_no_method():
  """gmcl.config asks the registry for a method's sections when it needs them: importing it
  imports no method module (methods import gmcl.config; no cycle)."""
  import subprocess
  import sys
  code = ("import sys, gmcl.config; assert not [m for m in sys.modules if m.startswith('gmcl.methods')], "
          "sorted(m for m in sys.modules if m.startswith('gmcl.'))")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_method_limits_are_checked_against_the_sequence_and_inf_only_where_it_means_something():
  c = method_config("hat")
  c.hat.max_tasks = 3
  with pytest.raises(ValueError, match=r"hat.max_tasks=3.*>= the 10 tasks"):
    validate_config(c)
  c.data.max_tasks = 3  # three tasks: three embeddings suffice
  validate_config(c)
  c = method_config("dgm")
  c.dgm.max_tasks = 5
  with pytest.raises(ValueError, match=r"dgm.max_tasks=5.*>= the 10 tasks"):
    validate_config(c)
  c = method_config("ogm")
  c.ogm.epsilon = float("inf")  # the unconstrained step: meaningful
  validate_config(c)
  for bad in (float("nan"), float("-inf")):
    c.ogm.epsilon = bad
    with pytest.raises(ValueError, match=r"ogm.epsilon=.* \(\+inf is valid for ogm.epsilon\)"):
      validate_config(c)


def test_an_override_of_a_missing_key_names_it_and_the_valid_keys():
  from gmcl.config import unknown_key  # pylint: disable=import-outside-toplevel
  c = method_config("sft")
  assert unknown_key(c, "train.solver_lr") == ""
  assert unknown_key(c, "foo.bar").startswith(
      "foo: the config has no key 'foo'; valid keys there: ['checkpoint', 'compile', 'data'")
  message = unknown_key(c, "train.lrate")
  assert message.startswith("train.lrate: train has no key 'lrate'") and "'solver_lr'" in message
  assert "it is a value" in unknown_key(c, "train.solver_lr.x")


def test_a_batch_that_cannot_fit_is_refused_before_any_data_is_loaded(tmp_path):
  from gmcl import loop  # pylint: disable=import-outside-toplevel
  c = method_config("sft")
  c.train.batch_size = 2 ** 31
  with pytest.raises(ValueError, match=r"config.train.batch_size=2147483648 cannot fit: .* GiB"):
    loop.run(c, str(tmp_path / "run"), progress=False, log=lambda s: None)
  assert not (tmp_path / "run").exists()  # refused before the workdir was made or data loaded
  c.train.batch_size = 64
  loop.check_sizes_fit(c)  # an ordinary batch fits
