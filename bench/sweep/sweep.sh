#!/bin/bash
# Run many CT->MRI training configurations side by side (a GPU machine, or patience) and print
# one JSON line per (run, evaluation): MRI mean and per-organ Dice, the CT-validation Dice that
# chose the checkpoint, and throughput. This is how the README's ablation table was measured.
#
#   python bench/cross_modality.py --prepare-only          # datasets under bench/results/cross_modality
#   CONFIGS=bench/sweep/recipe.txt EVALS="plain tta lcc" bash bench/sweep/sweep.sh
#
# A config line is NAME|DATA ARGS|TRAIN ARGS; $W is the dataset folder. Later flags win, so a line
# may override --steps or --seed. EVALS: plain, tta, lcc (largest component), tta+lcc.
set -u
W=${W:-bench/results/cross_modality}; OUT=${OUT:-$W/sweep}; DEV=${DEV:-}
mkdir -p "$OUT"
run() {  # name, data args, train args...
  local name=$1 data=$2; shift 2
  local r=$OUT/runs/$name
  eval train seg $data --val $W/ct-val --out $r --steps ${STEPS:-5000} --batch-size 16 --lr 1e-3 --seed 0 \
    --workers 2 --val-every ${VAL_EVERY:-500} --checkpoint-every 100000 --log-every 100 --no-progress "$@" \
    > $OUT/$name.log 2>&1 || { echo "$name FAILED (see $OUT/$name.log)"; return; }
  for t in ${EVALS:-plain}; do
    flags=$(echo $t | sed 's/plain//; s/tta/--tta/; s/lcc/--largest-component/; s/+/ /g')
    train eval --model $r --data $W/mr --out $OUT/eval/$name-$t $flags ${DEV:+--device $DEV} >> $OUT/$name.log 2>&1
    python3 - "$name ($t)" "$OUT/eval/$name-$t/metrics.json" "$r" <<'PY'
import csv, json, sys
name, path, run = sys.argv[1:]
m, v = json.load(open(path)), json.load(open(run + "/best/val_metrics.json"))
organs = {o: round(100 * (d.get("mean") or 0), 1) for o, d in m["per_organ"].items()}
last = list(csv.DictReader(open(run + "/metrics.csv")))[-1]
print(json.dumps({"run": name, "mr_mean": round(100 * m["mean_dice"], 1), **organs, "ct_val": round(100 * v["mean_dice"], 1),
                  "best_step": v["step"], "slices_s": last["slices_per_s"]}), flush=True)
PY
  done
}
while IFS="|" read -r name data args; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  eval run $name \"$data\" $args | tee -a $OUT/results.jsonl &
done < ${CONFIGS:-bench/sweep/recipe.txt}
wait
