#!/usr/bin/env bash
# MovieLens 100K as a new user would bring it: converted to the input contract, loaded, the daily
# metrics and implicit follows built by their DAGs, then the offline retrieval evaluation on a
# temporal split (train on the ratings up to SPLIT, evaluate on the 22 days after it: the last 10%).
# Usage: scripts/evaluate-movielens.sh ML_100K_DIR OUT_DIR [SPLIT]
set -euo pipefail
src=$1 out=$2 split=${3:-1998-03-31}
rm -rf "$out" && mkdir -p "$out"
# the shipped config, with the data under $out, DAGs starting on MovieLens' first day and a
# training window covering all of it
python - "$out" <<'PY'
import sys, yaml
out = sys.argv[1]
cfg = yaml.safe_load(open("config/recpipe.yaml"))
cfg["paths"]["data_root"] = f"{out}/data"
cfg["airflow"]["start_date"] = "1997-09-20"
cfg["retrieval"]["train_window_days"] = 365
yaml.safe_dump(cfg, open(f"{out}/recpipe.yaml", "w"), sort_keys=False)
PY
export RECPIPE_CONFIG=$out/recpipe.yaml
unset RECPIPE_DATA_DIR
recpipe convert-movielens --src "$src" --out "$out/dump"
recpipe load "$out/dump" > "$out/load.json"
recpipe metrics --start 1997-09-20 --end 1998-04-22
recpipe implicit-follows --day "$split"
recpipe evaluate --day "$split" --eval-days 22 --channels all,two_tower_no_logq
