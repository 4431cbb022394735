"""Kill-and-resume sweep: interrupts a smoke run at many points and checks each resumed
results.json against an uninterrupted run, byte for byte. Prints one JSON line per method.

  python -m benchmarks.kill_resume                   # in-process interruptions, every 3rd step
  python -m benchmarks.kill_resume --sigkill 5       # plus 5 runs killed with SIGKILL at random times

In-process points stop the run after exactly N steps (the checkpoint due at N, if any,
is written first). SIGKILL points kill a subprocess at a random moment, which may fall
during a checkpoint write.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from experiments.configs import dgr, sft
from gmcl import loop
from gmcl.data.build import load_data
from gmcl.methods import build_method

METHODS = {"sft": sft, "dgr": dgr}


def smoke_config(name):
  c = METHODS[name].get_config("smoke")
  c.model.gan = "mlp"
  c.data.max_tasks = 3
  c.checkpoint.every_steps = 5
  return c


def read(path):
  with open(path, "rb") as f:
    return f.read()


def in_process(name, every, data, root):
  c = smoke_config(name)
  whole = os.path.join(root, f"{name}_whole")
  loop.run(c, whole, data=data, progress=False, log=lambda s: None)
  total = sum(p.num_steps for p in build_method(name, c, data.image_shape, 10).phases()) * 3
  points, same = list(range(1, total, every)), 0
  for k in points:
    workdir = os.path.join(root, f"{name}_stop{k}")
    try:
      loop.run(c, workdir, data=data, progress=False, log=lambda s: None, stop_after_steps=k)
    except loop.RunInterrupted:
      pass
    loop.run(c, workdir, data=data, progress=False, log=lambda s: None)
    same += read(os.path.join(workdir, "results.json")) == read(os.path.join(whole, "results.json"))
  return {"method": name, "mode": "in-process", "kill_points": len(points), "identical": same,
          "steps_per_run": total}


def sigkill(name, n, root, seed=0):
  rng = random.Random(seed)
  base = [sys.executable, "-m", "experiments.main",
          f"--config=experiments/configs/{name}.py:smoke", "--noprogress",
          "--config.model.gan=mlp", "--config.data.max_tasks=3", "--config.checkpoint.every_steps=5"]
  whole = os.path.join(root, f"{name}_sig_whole")
  t0 = time.time()
  subprocess.run(base + [f"--workdir={whole}"], check=True, capture_output=True)
  duration = time.time() - t0
  same, killed = 0, 0
  for i in range(n):
    workdir = os.path.join(root, f"{name}_sig{i}")
    proc = subprocess.Popen(base + [f"--workdir={workdir}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.3, 0.95) * duration)
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      killed += 1
    proc.wait()
    if not os.path.exists(os.path.join(workdir, "results.json")) or \
        json.load(open(os.path.join(workdir, "results.json")))["completed_tasks"] < 3:
      subprocess.run(base + [f"--workdir={workdir}"], check=True, capture_output=True)
    same += read(os.path.join(workdir, "results.json")) == read(os.path.join(whole, "results.json"))
  return {"method": name, "mode": "sigkill", "runs": n, "killed_mid_run": killed, "identical": same}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--methods", default="sft,dgr")
  p.add_argument("--every", type=int, default=3, help="interrupt at every N-th step")
  p.add_argument("--sigkill", type=int, default=0, help="subprocess runs killed with SIGKILL")
  a = p.parse_args()
  data = load_data(smoke_config("sft"))
  with tempfile.TemporaryDirectory() as root:
    for name in a.methods.split(","):
      print(json.dumps(in_process(name, a.every, data, root)), flush=True)
      if a.sigkill:
        print(json.dumps(sigkill(name, a.sigkill, root)), flush=True)


if __name__ == "__main__":
  main()
