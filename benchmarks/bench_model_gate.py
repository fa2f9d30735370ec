"""Benchmark the nightly model gate: false rejections on clean nights, catches of planted regressions.

    python benchmarks/bench_model_gate.py --users 2000 --items 1500 --nights 20 --out bench-data/gate

Simulates `--first-days + --nights + 1` clean days (kept in `--out` and reused by a later run of
the same size), trains a cold two-tower through the first `--first-days` days (current), then
per night (evaluation day ds): the aged candidate trained through ds - 1 is evaluated with the
current version on the clicks of ds and gated exactly as the nightly DAG does
(tasks/retrieval/nightly.py); if it passes it becomes current, a rejection is a false rejection.
Each night also gates two planted regressions of the clean candidate, which must be rejected: its
item ids shuffled (the exported item vectors permuted over the ids: every id gets another item's
vector) and its weights reset to initialisation (vectors exported from the untrained towers).
Prints one line per gate and the counts, next to what the former rule (reject when the point drop
exceeds max_recall_drop) would have decided on the clean nights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from models.common.checkpoints import save_model
from models.common.features import latest_sequences
from models.retrieval.two_tower import TwoTower, load_model
from tasks.core import artifacts, registry
from tasks.core.config import DEFAULT_CONFIG, PlatformConfig, load_config
from tasks.core.warehouse import refresh_views
from tasks.ingest.load import load_dir
from tasks.retrieval import nightly
from tasks.retrieval.data import connect_read, load_catalogue, load_events
from tasks.retrieval.two_tower import MODEL, export, load_users, train
from tasks.simulator import simulate

PLANTED = ("ids_shuffled", "weights_reset")


def platform(out: Path, users: int, items: int, days: int, seed: int) -> PlatformConfig:
    """The shipped config over a clean simulation of `days` days in `out` (simulated and loaded once)."""
    path = out / "recpipe.yaml"
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["paths"]["data_root"] = str(out / "data")
    raw["simulator"].update({"users": users, "items": items, "days": days, "seed": seed})
    if path.exists() and yaml.safe_load(path.read_text())["simulator"] == raw["simulator"]:
        cfg = load_config(path)
        shutil.rmtree(cfg.artifacts_dir, ignore_errors=True)  # a fresh registry, the same data
        return cfg
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    partial = path.with_suffix(".partial")  # becomes the config file once the data is complete
    partial.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(partial)
    started = time.perf_counter()
    simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
    load_dir(cfg.landing_dir, cfg)
    refresh_views(cfg)
    partial.rename(path)
    print(f"simulated and loaded {days} days of {users:,} users in {time.perf_counter() - started:.0f} s")
    return cfg


def plant(cfg: PlatformConfig, candidate: artifacts.Version, kind: str, seed: int) -> str:
    """A regressed copy of `candidate` published (not current) in the two-tower store; its name."""
    store = registry.model_store(cfg, MODEL)
    day = registry.trained_through(candidate)

    def shuffled(folder: Path) -> dict[str, str]:
        for f in candidate.path.iterdir():
            if f.name != "meta.json":
                shutil.copy2(f, folder / f.name)
        vectors = np.load(folder / "item_vectors.npy")  # item_ids.npy stays sorted: each id gets another's vector
        np.save(folder / "item_vectors.npy", np.random.default_rng(seed).permutation(vectors))
        return {"planted": kind}

    def reset(folder: Path) -> dict[str, str]:
        _, vocabs = load_model(candidate.path)
        first = day - dt.timedelta(days=cfg.retrieval.train_window_days - 1)
        with connect_read(cfg) as con:
            catalogue = load_catalogue(con, day)
            history = load_events(con, catalogue, cfg.retrieval.positive_event, first, day)
            users = load_users(con, day)
        torch.manual_seed(seed)
        model = TwoTower({k: len(v) for k, v in vocabs.items()}, cfg.retrieval.two_tower.dim)
        save_model(folder, model, vocabs)
        ids = np.unique(history.user_id)
        export(folder, model, vocabs, catalogue, users,
               [(ids, latest_sequences(history, ids, cfg.retrieval.two_tower.sequence_length))])
        return {"planted": kind}

    write = {"ids_shuffled": shuffled, "weights_reset": reset}[kind]
    return artifacts.publish(store, write, candidate.meta, make_current=False).name


def gated(cfg: PlatformConfig, version: str, ds: dt.date) -> tuple[bool, dict]:
    """Evaluate and gate `version` on the night of ds: (rejected, the model_gate row)."""
    nightly.evaluate_candidate(cfg, MODEL, version, ds)
    try:
        return False, nightly.gate(cfg, MODEL, version, ds)
    except nightly.ModelRejected:
        meta = artifacts.load(registry.model_store(cfg, MODEL), version).meta["evaluation"]
        return True, {"k": cfg.evaluation.k[0], **meta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--nights", type=int, default=20)
    parser.add_argument("--first-days", type=int, default=5, help="days of the cold first version")
    parser.add_argument("--seed", type=int, default=42, help="the simulation's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # the gate's alerts: in the alerts log
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cfg = platform(args.out, args.users, args.items, args.first_days + args.nights + 1, args.seed)
    ev = cfg.evaluation
    first = cfg.simulator.start_date + dt.timedelta(days=args.first_days - 1)
    train(cfg, first, make_current=True)
    print(f"gate: max_recall_drop {ev.max_recall_drop:.0%}, {ev.gate_bootstrap} bootstrap resamples, "
          f"{1 - ev.gate_alpha:.0%} CI, seed {ev.gate_seed}")
    clean, former, planted = 0, 0, {kind: 0 for kind in PLANTED}
    for night in range(1, args.nights + 1):
        ds = first + dt.timedelta(days=night + 1)
        candidate = nightly.train_candidate(cfg, MODEL, ds)
        version = artifacts.load(registry.model_store(cfg, MODEL), candidate)
        for kind in PLANTED:
            rejected, row = gated(cfg, plant(cfg, version, kind, night), ds)
            planted[kind] += rejected
            print(f"  {ds} {kind:>13}: {'REJECTED' if rejected else 'passed  '} {nightly.describe_gate(row)}")
        rejected, row = gated(cfg, candidate, ds)
        clean += rejected
        former += row["recall_drop"] > ev.max_recall_drop
        print(f"  {ds} {'clean':>13}: {'REJECTED' if rejected else 'passed  '} {nightly.describe_gate(row)}")
        if not rejected:
            nightly.publish(cfg, MODEL, candidate)
    print(f"{args.nights} clean nights: {clean} rejected (false rejections; the former point rule: {former})")
    for kind, n in planted.items():
        print(f"{args.nights} planted regressions ({kind}): {n} rejected")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
