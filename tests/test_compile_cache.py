"""The persistent compilation cache (gmcl.compile_cache): one folder per kind of machine, the
user's JAX settings win, a second process reads back what the first compiled, and nothing it reads
back changes a result.

The suite itself runs with the cache off (conftest.py), so the tests that use it start their own
processes, with the environment cleared of the suite's setting.
"""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from gmcl import compile_cache
from experiments.configs import dgr
from gmcl.config import validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A classifier's training steps (gmcl's MLP, Adam): compiled once per process, then run; prints
# the cache's counters and the trained parameters' bytes as hex.
_PROGRAM = r"""
import hashlib, json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from gmcl import compile_cache
from gmcl.models.classifiers import make_classifier
folder = compile_cache.enable(sys.argv[1], min_compile_secs=0.0)
model = make_classifier("mlp", 10, hidden=(64, 64))
x = jax.random.normal(jax.random.PRNGKey(1), (32, 28, 28, 1))
y = jnp.arange(32) % 10
params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
opt = optax.adam(1e-3)
@jax.jit
def train(params):
  def step(carry, _):
    p, s = carry
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()
    g = jax.grad(loss)(p)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None
  (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=5)
  return p
out = jax.device_get(train(params))
digest = hashlib.sha256(b"".join(np.asarray(v).tobytes() for v in jax.tree.leaves(out))).hexdigest()
print(json.dumps({"folder": folder, "stats": compile_cache.stats(), "digest": digest}))
"""


def _env(tmp_path, **extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("JAX_") and k not in ("GMCL_CACHE_DIR", "GMCL_TEST_COMPILATION_CACHE")}
  env.update(GMCL_CACHE_DIR=str(tmp_path / "home_cache"), PYTHONPATH=ROOT, **extra)
  return env


def _program(tmp_path, setting, **extra):
  proc = subprocess.run([sys.executable, "-c", _PROGRAM, setting], cwd=ROOT, env=_env(tmp_path, **extra),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _description(**changes):
  desc = {"backend": "cpu", "jax": "0.10.2", "jaxlib": "0.10.2", "vendor": "GenuineIntel", "family": "6",
          "model": "143", "name": "Intel(R) Xeon(R) Platinum 8480+", "flags_sha256": "ab" * 32}
  desc.update(changes)
  return desc


def test_machine_key_names_the_machine_and_changes_with_it():
  key = compile_cache.machine_key(_description())
  assert key == compile_cache.machine_key(_description())  # a pure function of the description
  assert key.startswith("cpu-GenuineIntel-6-143-") and key.endswith("-jax0.10.2")
  others = [_description(model="167"), _description(vendor="AuthenticAMD", family="25", model="1"),
            _description(flags_sha256="cd" * 32), _description(jax="0.11.0"), _description(jaxlib="0.11.0")]
  keys = {compile_cache.machine_key(d) for d in others}
  assert key not in keys and len(keys) == len(others)
  gpu = compile_cache.machine_key({"backend": "gpu", "jax": "0.11.0", "jaxlib": "0.11.0",
                                   "device_kind": "NVIDIA H200"})
  assert gpu.startswith("gpu-NVIDIA_H200-")  # a folder name: no spaces or slashes
  assert all(c.isalnum() or c in ".+_-" for c in gpu)
  # This machine's key: stable within a process, and its fingerprint names the CPU it runs on.
  assert compile_cache.machine_key() == compile_cache.machine_key()
  assert compile_cache.machine_fingerprint()["backend"] == "cpu"


def test_cache_dir_settings(tmp_path, monkeypatch):
  monkeypatch.setenv("GMCL_CACHE_DIR", str(tmp_path))
  key = compile_cache.machine_key()
  assert compile_cache.cache_dir("") is None
  assert compile_cache.cache_dir("auto") == os.path.join(str(tmp_path), "xla", key)
  assert compile_cache.cache_dir(str(tmp_path / "mine")) == os.path.join(str(tmp_path / "mine"), key)
  with pytest.raises(ValueError, match="compile.cache_dir"):
    compile_cache.cache_dir(None)


@pytest.mark.parametrize("key,value", [("cache_dir", 3), ("cache_dir", None), ("min_compile_secs", -1.0),
                                       ("min_compile_secs", "1"), ("min_compile_secs", True),
                                       ("programs", "yes"), ("programs", 1), ("max_mb", -1),
                                       ("max_mb", "4096"), ("max_mb", True)])
def test_validate_config_rejects_bad_settings(key, value):
  config = dgr.get_config("smoke")
  validate_config(config)
  # A ConfigDict refuses a value of another type; a config built in code may still hold one.
  config.compile = ml_collections.ConfigDict({**config.compile.to_dict(), key: value})
  with pytest.raises(ValueError, match=f"compile.{key}"):
    validate_config(config)


def test_second_process_reads_back_what_the_first_compiled(tmp_path):
  first = _program(tmp_path, "auto")
  folder = first["folder"]
  assert folder == os.path.join(str(tmp_path / "home_cache"), "xla", compile_cache.machine_key())
  assert first["stats"]["on"] and first["stats"]["folder"] == compile_cache.machine_key()
  assert first["stats"]["written"] >= 1 and first["stats"]["hits"] == 0
  assert first["stats"]["compiled"] == first["stats"]["requests"] >= first["stats"]["written"]
  written = sorted(f for f in os.listdir(folder) if f != "machine.json")
  assert written, "the first process wrote no compiled program"
  with open(os.path.join(folder, "machine.json")) as f:
    assert json.load(f) == compile_cache.machine_fingerprint()

  second = _program(tmp_path, "auto")
  assert second["stats"]["hits"] == first["stats"]["written"] and second["stats"]["written"] == 0, second["stats"]
  assert sorted(f for f in os.listdir(folder) if f != "machine.json") == written  # nothing new
  # An executable read back computes what the compiled one did, and what a process without the
  # cache computes: the same program, so the same bytes.
  off = _program(tmp_path, "")
  assert off["folder"] is None and not off["stats"]["on"] and off["stats"]["requests"] == 0
  assert first["digest"] == second["digest"] == off["digest"]


def test_the_users_settings_win(tmp_path):
  theirs = str(tmp_path / "theirs")
  # Their folder and their threshold: with JAX's default (programs compiled in under 1 s are not
  # written) whether this small program is written would depend on the machine's speed.
  used = _program(tmp_path, "auto", JAX_COMPILATION_CACHE_DIR=theirs,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  assert used["folder"] == theirs and used["stats"]["on"] and os.listdir(theirs)
  assert not os.path.exists(tmp_path / "home_cache" / "xla")  # gmcl's folder untouched
  # Their threshold too: gmcl's min_compile_secs (0 here) does not replace it.
  slow_only = str(tmp_path / "slow_only")
  used = _program(tmp_path, "auto", JAX_COMPILATION_CACHE_DIR=slow_only,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1e9")
  assert used["folder"] == slow_only and used["stats"]["written"] == 0
  assert not os.path.exists(slow_only) or not os.listdir(slow_only)
  off = _program(tmp_path, "auto", JAX_ENABLE_COMPILATION_CACHE="false")
  assert off["folder"] is None and off["stats"]["requests"] == 0
  assert not os.path.exists(tmp_path / "home_cache" / "xla")


def test_a_folder_that_cannot_be_written_is_said_and_skipped(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  code = ("import sys; from gmcl import compile_cache; said = [];"
          "print(compile_cache.enable(sys.argv[1], log=said.append)); print(said)")
  proc = subprocess.run([sys.executable, "-c", code, str(blocker)], cwd=ROOT, env=_env(tmp_path),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0] == "None" and "no compilation cache" in lines[1] and str(blocker) in lines[1]


def _fill(folder, entries):
  """Writes cache entries into machine folder ``folder`` (and its programs folder): ``(name, size,
  last use)``; an XLA entry ``KEY-cache`` with ``atime`` records its use in JAX's ``KEY-atime`` file
  (its file times then older), the others in their file times."""
  os.makedirs(folder, exist_ok=True)
  os.makedirs(compile_cache.programs_dir(folder), exist_ok=True)
  for name, size, used, *atime in entries:
    root = folder if name.endswith("-cache") else compile_cache.programs_dir(folder)
    path = os.path.join(root, name)
    with open(path, "wb") as f:
      f.write(b"x" * size)
    if atime:
      with open(path[:-len("-cache")] + "-atime", "wb") as f:
        f.write(int(used * 1e9).to_bytes(8, "little"))
      used = 1e9
    os.utime(path, (used, used))


def test_prune_removes_the_least_recently_used_entries_first(tmp_path):
  folder = str(tmp_path / "xla" / "cpu-Test-1-2-abcd1234-jax0")
  hexkey = lambda c: c * 64
  _fill(folder, [("a-cache", 100, 1.7e9), ("b-cache", 200, 1.5e9), ("c-cache", 300, 1.8e9, "atime"),
                 (hexkey("d"), 400, 1.6e9), (hexkey("e") + ".has_convolution.json", 10, 1.4e9)])
  others = {os.path.join(folder, "machine.json"): 1e9, os.path.join(folder, ".lockfile"): 1e9,
            os.path.join(compile_cache.programs_dir(folder), "notes.txt"): 1e9,
            os.path.join(folder, "a-cache.123.tmp"): 1e9,  # a killed writer's: removed
            os.path.join(compile_cache.programs_dir(folder), hexkey("f") + ".9.9.tmp"): None}  # a live one
  for path, t in others.items():
    with open(path, "w") as f:
      f.write("kept")
    if t:
      os.utime(path, (t, t))
  found = {os.path.basename(e[2][0]): (e[0], e[1]) for e in compile_cache.entries(folder)}
  assert found == {"a-cache": (1.7e9, 100), "b-cache": (1.5e9, 200), "c-cache": (1.8e9, 300),
                   hexkey("d"): (1.6e9, 400), hexkey("e") + ".has_convolution.json": (1.4e9, 10)}
  # 1010 bytes; to hold 600 the oldest go first: e (1.4e9, 10), b (1.5e9, 200), d (1.6e9, 400),
  # leaving a + c = 400 bytes. c's use is JAX's atime record (1.8e9), not its file time (1e9).
  done = compile_cache.prune(folder, 600)
  assert done == {"removed": 3, "freed": 610, "kept": 2, "kept_bytes": 400}
  assert sorted(os.path.basename(e[2][0]) for e in compile_cache.entries(folder)) == ["a-cache", "c-cache"]
  assert os.path.exists(os.path.join(folder, "c-atime")) and not os.path.exists(os.path.join(folder, "b-atime"))
  assert [os.path.exists(p) for p in others] == [True, True, True, False, True]
  assert compile_cache.prune(folder, 400)["removed"] == 0  # it fits
  assert compile_cache.prune(folder, 0) == {"removed": 2, "freed": 400, "kept": 0, "kept_bytes": 0}
  assert not os.path.exists(os.path.join(folder, "c-atime")) and os.path.exists(os.path.join(folder, "machine.json"))
  with pytest.raises(ValueError, match="max_bytes"):
    compile_cache.prune(folder, -1)


def test_a_run_holds_its_folder_to_max_mb_and_the_command_lists_and_prunes(tmp_path, capsys):
  folder = os.path.join(str(tmp_path / "home_cache"), "xla", compile_cache.machine_key())
  _fill(folder, [("old-cache", 3000, 1.5e9), ("new-cache", 1000, 1.9e9)])
  code = ("import sys; from gmcl import compile_cache; said = [];"
          "compile_cache.enable('auto', max_mb=float(sys.argv[1]), log=said.append);"
          "compile_cache.enable('auto', max_mb=float(sys.argv[1]), log=said.append);"
          "import json; print(json.dumps(said))")
  proc = subprocess.run([sys.executable, "-c", code, str(3500 / 2**20)], cwd=ROOT, env=_env(tmp_path),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  said = [s for s in json.loads(proc.stdout.strip().splitlines()[-1]) if "removed" in s]
  assert len(said) == 1 and "1 least recently used" in said[0] and "compile.max_mb" in said[0]  # once a process
  assert os.path.exists(os.path.join(folder, "new-cache")) and not os.path.exists(os.path.join(folder, "old-cache"))
  with pytest.raises(ValueError, match="compile.max_mb"):
    compile_cache.enable("", max_mb=-1)

  other = str(tmp_path / "home_cache" / "xla" / "cpu-Other-1-1-00000000-jax0")
  _fill(other, [("x-cache", 2 * 2**20, 1.6e9), ("ab" * 32, 2**20, 1.7e9)])
  root = str(tmp_path / "home_cache" / "xla")
  assert compile_cache._main(["--root", root]) == 0
  out = capsys.readouterr().out
  assert "2 machine folder(s)" in out and "cpu-Other-1-1-00000000-jax0: 2 entries, 3.0 MiB" in out
  assert f"{compile_cache.machine_key()}: 1 entries" in out
  assert compile_cache._main(["--root", root, "--prune_mb", "1.5"]) == 0
  out = capsys.readouterr().out
  assert "cpu-Other-1-1-00000000-jax0: removed 1 entries (2.0 MiB)" in out and "1 entries, 1.0 MiB" in out
  assert os.listdir(compile_cache.programs_dir(other)) == ["ab" * 32]
  for bad, says in ((["--root", root, "--prune_mb", "-1"], "--prune_mb=-1; valid: a number of MiB >= 0"),
                    (["--root", str(tmp_path / "none")], "no such folder")):
    with pytest.raises(SystemExit):
      compile_cache._main(bad)
    assert says in capsys.readouterr().err
  assert os.listdir(compile_cache.programs_dir(other)) == ["ab" * 32]  # nothing more removed


@pytest.mark.slow
def test_a_run_with_the_cache_gives_the_results_of_a_run_without(tmp_path):
  """experiments.main, DGR smoke, three processes: cache empty, cache filled, cache off. The three
  results.json are equal but for the compile setting itself (every score equal to the last bit);
  the second run reads its programs back."""
  base = [sys.executable, "-m", "experiments.main", "--config", "experiments/configs/dgr.py:dataset=mnist,smoke",
          "--config.compile.min_compile_secs=0"]
  runs = {}
  for name, setting in (("first", str(tmp_path / "cache")), ("second", str(tmp_path / "cache")), ("off", "")):
    work = tmp_path / name
    proc = subprocess.run(base + [f"--config.compile.cache_dir={setting}", "--workdir", str(work)], cwd=ROOT,
                          env=_env(tmp_path),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(work / "timings.json") as f:
      cache = json.load(f)["compilation_cache"]
    with open(work / "results.json") as f:
      results = json.load(f)
    assert results["config"]["compile"]["cache_dir"] == setting
    del results["config"]["compile"]  # the one setting that differs between the runs
    runs[name] = (json.dumps(results, sort_keys=True), cache)
  assert runs["first"][0] == runs["second"][0] == runs["off"][0]
  assert runs["first"][1]["written"] >= 1
  assert runs["second"][1]["hits"] >= 1 and runs["second"][1]["hits"] > runs["second"][1]["written"], runs
  assert not runs["off"][1]["on"] and runs["off"][1]["requests"] == 0
  # The traced chunk programs (gmcl.program_cache): exported by the first run, read back by the
  # second (which traces none), none without the cache; the same results all three times.
  first, second, off = (runs[k][1]["programs"] for k in ("first", "second", "off"))
  assert first["on"] and first["written"] >= 1 and first["failed"] == 0, first
  assert second["read"] == first["written"] and second["traced"] == second["written"] == 0, second
  assert not off["on"] and off["read"] == off["traced"] == 0, off
