#!/usr/bin/env bash
# Per-class MNIST at the papers' schedules (each config's `paper` argument: official architecture,
# iterations, batch and optimiser), several seeds in one program per run, on one accelerator:
# MeRGAN RA and JR first, then DGMw, DGMa and DGR as the time allows. Phases compile as whole
# lax.scan chunks there (train.chunk_mode=auto); the CPU keeps its unrolled default.
#
#   benchmarks/paper_gpu.sh OUT [ARRAYS.npz]
#
# OUT gets paper_gpu.tgz (for each finished run SCHEDULE_Sseeds/mnist/RUN/results.json and
# timings.json, the layout of results/: `tar -xzf OUT/paper_gpu.tgz -C results/` records them for
# `python -m experiments.paper_table --schedule paper`), logs.tgz (every run's log) and summary.txt
# (each run's A_t as mean ± sd, and how far an unfinished run got). A run cut off by the time budget
# resumes from its checkpoints in WORK when the script is run again on the same machine.
#
# The data come as arrays (ARRAYS, default .data/mnist.npz), read without TensorFlow or TFDS:
#   python -m gmcl.data.prepare mnist --export_npz .data/mnist.npz
# Environment: RUNS (default "mergan_ra mergan_jr dgm_dgmw dgm_dgma dgr"), SEEDS (3), SCHEDULE
# (paper; smoke for the CPU check in tests/test_paper_gpu.py), BUDGET_S (540: seconds for all runs,
# below a 600-s command limit), WORK (runs/paper_gpu), PYTHON (python3), EXTRA (more --config.KEY=V
# for every run, e.g. --config.train.generator_steps=8001, the MeRGAN iterations its users needed on
# 10-task MNIST).
set -uo pipefail
OUT=${1:?usage: benchmarks/paper_gpu.sh OUT [ARRAYS.npz]}
ARRAYS=${2:-.data/mnist.npz}
RUNS=${RUNS:-mergan_ra mergan_jr dgm_dgmw dgm_dgma dgr}
SEEDS=${SEEDS:-3}
SCHEDULE=${SCHEDULE:-paper}
WORK=${WORK:-runs/paper_gpu}
PY=${PYTHON:-python3}
EXTRA=${EXTRA:-}
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
export PYTHONUNBUFFERED=1

[ -f "$ARRAYS" ] || { echo "error: $ARRAYS not found; write it with: python -m gmcl.data.prepare mnist --export_npz $ARRAYS" >&2; exit 2; }
missing=$($PY -c "
import importlib
names = ['jax', 'flax', 'optax', 'orbax.checkpoint', 'chex', 'ml_collections', 'absl', 'tqdm', 'numpy']
print(' '.join(n for n in names if importlib.util.find_spec(n.split('.')[0]) is None))")
[ -z "$missing" ] || { echo "error: missing Python packages: $missing (carry them as wheels)" >&2; exit 2; }
mkdir -p "$OUT" "$WORK"
$PY -c "import jax; print('backend', jax.default_backend(), jax.devices(), 'jax', jax.__version__)" | tee "$OUT/summary.txt"

tag="${SCHEDULE}_${SEEDS}seeds"
stage=$(mktemp -d)
for run in $RUNS; do
  module=${run%%_*}
  variant=${run#"$module"}; variant=${variant#_}
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -le 20 ]; then
    echo "$run: not started (time budget spent)" | tee -a "$OUT/summary.txt"
    continue
  fi
  arg="dataset=mnist,protocol=per_class,$SCHEDULE${variant:+,variant=$variant}"
  start=$(date +%s)
  # shellcheck disable=SC2086
  timeout --signal=KILL "$left" $PY -m experiments.main --config "experiments/configs/$module.py:$arg" \
      --config.data.arrays="$ARRAYS" --config.num_seeds="$SEEDS" $EXTRA --workdir "$WORK/$tag/$run" \
      --noprogress > "$stage/$run.log" 2>&1
  rc=$?
  echo "$run: exit status $rc after $(( $(date +%s) - start )) s (config $arg)" | tee -a "$OUT/summary.txt"
  if [ -f "$WORK/$tag/$run/results.json" ]; then
    mkdir -p "$stage/results/$tag/mnist/$run"
    cp "$WORK/$tag/$run/results.json" "$WORK/$tag/$run/timings.json" "$stage/results/$tag/mnist/$run/" 2>/dev/null
  fi
  grep -E "^task |A_|±" "$stage/$run.log" | tail -n 8 >> "$OUT/summary.txt"
done
if [ -d "$stage/results" ]; then
  tar -czf "$OUT/paper_gpu.tgz" -C "$stage/results" .
fi
tar -czf "$OUT/logs.tgz" -C "$stage" $(cd "$stage" && ls ./*.log 2>/dev/null)
rm -rf "$stage"
