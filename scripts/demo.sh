#!/usr/bin/env bash
# `make demo`: build the Tux Paint dataset (cached), train SGR, SAF and the VSE baseline with short recipes
# (one line per epoch: loss, dev rsum, seconds), evaluate SGR, SAF, SGRAF (their ensemble) and VSE on the test
# split, then run three example text searches and draw them into $RUNS/demo.png. Everything it writes is under
# data/ and runs/ (both ignored by git); re-running reuses the dataset and finished runs.
#
# Determinism: the recipes fix every seed, and the thread count is pinned (ITMATCH_DEMO_THREADS, default 2),
# because the number of threads changes the order of floating-point sums and with it the whole training run.
# Same threads, same CPU kind, same Debian stamps package: the same numbers. See README.md for the spread.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DATA=${ITMATCH_DEMO_DATA:-data/tuxpaint}
RUNS=${ITMATCH_DEMO_RUNS:-runs/demo}
export OMP_NUM_THREADS=${ITMATCH_DEMO_THREADS:-2} MKL_NUM_THREADS=${ITMATCH_DEMO_THREADS:-2}
echo "== itmatch demo: $OMP_NUM_THREADS threads, outputs in $RUNS"
itmatch() { "$PY" -m itmatch "$@"; }

echo "== 1. the Tux Paint stamps: pictures, captions, region features (cached after the first build)"
[ -f "$DATA/dataset.json" ] || itmatch data build tuxpaint --out "$DATA"
# Every word of the dataset's captions gets a GloVe vector; the demo recipes freeze the word table, so a test
# word never seen in training still lands near its neighbours. It is kept with the runs: the dataset folder holds
# only what `data build` wrote, so that a later build may replace it.
mkdir -p "$RUNS"
[ -f "$RUNS/vocab_all.json" ] || itmatch data vocab --threshold 1 --out "$RUNS/vocab_all.json" \
  --captions "$DATA/train_caps.txt" --captions "$DATA/dev_caps.txt" --captions "$DATA/test_caps.txt"

for model in sgr saf vse; do
  echo "== 2. train $model (configs/demo_$model.toml)"
  resume=(); [ -f "$RUNS/$model/last.pt" ] && resume=(--resume)
  itmatch train --config "configs/demo_$model.toml" --data "$DATA" --vocab "$RUNS/vocab_all.json" \
    --out "$RUNS/$model" "${resume[@]}" --no-progress
done

echo "== 3. evaluate on the test split (150 pictures, one caption each)"
for run in "sgr" "saf" "sgr saf" "vse"; do
  args=(); for m in $run; do args+=(--checkpoint "$RUNS/$m/best.pt"); done
  echo "-- ${run/sgr saf/SGRAF = SGR + SAF}"
  itmatch evaluate --data "$DATA" --split test "${args[@]}" --output "$RUNS/test.${run// /+}.json" --no-progress
done

echo "== 4. example searches with SGRAF (top 3 test pictures per query)"
"$PY" -m itmatch.demo --data "$DATA" --checkpoint "$RUNS/sgr/best.pt" --checkpoint "$RUNS/saf/best.pt" \
  --query "a truck" --query "a letter" --query "a red apple" --figure "$RUNS/demo.png"
