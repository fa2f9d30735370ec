#!/usr/bin/env bash
# MovieLens 100K as a new user would bring it: converted to the input contract, loaded, the daily
# metrics and implicit follows built by their DAGs, then the offline retrieval evaluation on a
# temporal split (train on the ratings up to SPLIT, evaluate on the 22 days after it: the last 10%),
# then the funnel evaluation: the nightly artifacts as of SPLIT, the feeds for the day after it
# scored on the same 22 days.
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
# No impressions, and movies released over decades: a pool scored per impression, or over the
# movies of the last days, would be empty (GX rejects it; the two-tower and pool channels and the
# exploration slots would serve nothing). Here every pool spans the catalogue, ranked by likes per
# click (the share of ratings >= 4).
for pool in cfg["pools"]:
    pool["window"] = "36500d"
    pool["score"].update({"action": "like", "per": "click", "min_impressions": 0})
yaml.safe_dump(cfg, open(f"{out}/recpipe.yaml", "w"), sort_keys=False)
PY
export RECPIPE_CONFIG=$out/recpipe.yaml
unset RECPIPE_DATA_DIR
recpipe convert-movielens --src "$src" --out "$out/dump"
recpipe load "$out/dump" > "$out/load.json"
recpipe metrics --start 1997-09-20 --end 1998-04-22
recpipe implicit-follows --day "$split"
recpipe evaluate --day "$split" --eval-days 22 --channels all,two_tower_no_logq
# What the nightly DAGs would have current after $split: the daily pools refreshed at its end, the
# two-tower, ItemCF and Swing trained through it, the full ranker and pre-ranker on its ranking
# examples (MovieLens has no impressions, hence no examples: the funnel then serves without them,
# fail-open), the two-tower's ANN indexes over the pools.
python - "$split" <<'PY'
import datetime as dt, logging, sys
from tasks.core.config import load_config
from tasks.pools.refresh import end_of_day, refresh_pools
from tasks.ranking import full, pre
from tasks.ranking.data import build_exposures, load_exposures
from tasks.retrieval import ann_refresh, i2i, two_tower
from tasks.retrieval.data import connect_read
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
day, cfg = dt.date.fromisoformat(sys.argv[1]), load_config()
daily = [p.name for p in cfg.pools if p.refresh == "daily"]
refresh_pools(cfg, [end_of_day(day)], daily)
two_tower.train(cfg, day, make_current=True)
for model in ("itemcf", "swing"):
    i2i.train(cfg, model, day, make_current=True)
first = day - dt.timedelta(days=cfg.ranking.full.first_window_days - 1)
build_exposures(cfg, first, day)
with connect_read(cfg) as con:
    exposures = load_exposures(con, first, day)
if len(exposures):
    full.train(cfg, day, make_current=True)
    pre.train(cfg, day, exposures, None, make_current=True)
else:
    print(f"no ranking examples on {first}..{day} (no impressions): no full ranker or pre-ranker")
for pool in daily:
    print(ann_refresh.refresh(cfg, "two_tower", pool))
PY
recpipe evaluate --day "$split" --eval-days 22 --funnel
