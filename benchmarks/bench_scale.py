"""Scale benchmark: the whole nightly pipeline on one machine, every step timed with its peak memory,
at a fraction of the size first and then at full size, extrapolated to 10x and 100x.

    python benchmarks/bench_scale.py --users 1000000 --items 100000 --days 30 --data-dir bench-data/scale

Steps, each in its own child process of this script (its wall seconds, and its peak resident
memory: the largest sum of the resident memory of the child and its descendants, e.g. Spark's JVM,
sampled every 0.2 s, and the kernel's high-water mark of the child from wait4):

    simulate          data preparation: the built-in simulator writes the landing batches (reused
                      when the size's folder holds them already)
    ingest            the loader (tasks.ingest.load.load_dir, what `recpipe load` runs), the raw
                      views and the experiments' assignments (the ingest DAG's steps)
    marts_duckdb      the project's dbt runner (tasks.core.dbt_runner.run_dbt, as the DAGs): a full
                      `dbt build` of the default selector (staging, intermediate, metric marts,
                      experiment readouts; models, data and unit tests), then `dbt build` of the
                      pool, social and ranking models for the day before the last (the vars the
                      nightly DAGs pass)
    rerender          on a copy of the warehouse marts_duckdb left: `dbt run` of the pool, social and
                      ranking models for the last day (a new day: insert only), then the same run again
                      (a re-render, as a retry or backfill does: the day's keys deleted, then inserted)
    dbt_overhead      the same two invocations as `dbt run` (models only) on a copy of the warehouse as
                      ingest left it, and the same models' compiled SQL (`dbt compile`) run in DAG
                      order as one DuckDB script on another copy: ratios dbt build / script and dbt
                      run / script (run is the like-for-like one: the script has no tests)
    marts_spark       the same two invocations as `dbt run` on the spark target (a local Spark driver
                      in the dbt process, --spark-master, --spark-memory), fresh Spark tables, on a
                      copy of the post-ingest warehouse (run_dbt points its views at the Spark
                      build); ratio Spark / DuckDB run
    pools             content_pools: refresh_pools at the end of the last day (dbt candidates, GX, publish)
    kol               kol_scoring: kol_features in dbt, then the empirical-Bayes scores checked by GX
    implicit_follows  implicit_follows: dbt, then the GX check against the follow graph
    train_prep        data preparation for one normal night: ranking exposures of the last two days,
                      a first two-tower (through the day before the night's training day) and a first
                      full ranker (through the day before the last), cold, 1 day, 1 epoch
    train_two_tower   nightly_training: the two-tower candidate (aged: 1 epoch on the new day, the
                      30-day window's vocabularies), streamed in chunks of training.read_batch_rows
    gate_two_tower    its evaluation against the current version and popularity, GX gate, publish
    rank_score        ranking: the current full ranker scores the last day; distillation gate (GX)
    train_preranking  the pre-ranker on the last day, distilled from the gated predictions
    train_full        the aged full ranker: 1 epoch on the last day
    ann               ann_refresh: one faiss index per (vector model, pool), recall-checked, published

With --growth-fraction f (default 0.1) the whole pipeline first runs at f x users and f x items
(same days), then at full size; the growth exponent of a step is log(t_full / t_small) / log(1 / f)
and its extrapolation t_full x 10^exponent and x 100^exponent (the same for peak memory). The
terminal gets one line per step and the final table; the children's logs go to
<data-dir>/bench_scale.log, the results to <data-dir>/bench_scale.json. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STEPS = ("simulate", "ingest", "marts_duckdb", "rerender", "dbt_overhead", "marts_spark", "pools", "kol",
         "implicit_follows", "train_prep", "train_two_tower", "gate_two_tower", "rank_score", "train_preranking",
         "train_full", "ann")
PREPARATION = {"simulate", "train_prep"}  # data preparation, not a nightly step
# The nightly invocation next to the full build: the pool, social and ranking models of the day
# before the last (the previous night's; the pools, kol, implicit_follows and train_prep steps then
# add the last day to existing tables, as a normal night does, rather than re-rendering a key).
NIGHTLY_SELECT = ["--select", "path:models/pools", "path:models/social", "path:models/ranking"]


# ---------------------------------------------------------------------------------------------
# The child side: one step, in this process; prints its result as the last line (JSON).


def _config(path: Path, engine: str | None = None) -> Any:
    from tasks.core.config import load_config

    cfg = load_config(path)
    if engine:
        cfg = cfg.model_copy(update={"warehouse": cfg.warehouse.model_copy(update={"engine": engine})})
    return cfg


def _last_day(cfg: Any) -> dt.date:
    return cfg.simulator.start_date + dt.timedelta(days=cfg.simulator.days - 1)


def _nightly_vars(cfg: Any, day: dt.date | None = None) -> dict[str, Any]:
    """The nightly invocation's vars for `day` (default: the day before the last)."""
    from tasks.pools.refresh import AS_OF_FORMAT, end_of_day

    day = day or _last_day(cfg) - dt.timedelta(days=1)
    return {"ds_from": day.isoformat(), "ds": day.isoformat(), "as_of": [end_of_day(day).strftime(AS_OF_FORMAT)]}


def _dbt_pair(cfg: Any, command: str) -> dict[str, Any]:
    """The two invocations of the marts steps, timed apart: `dbt <command>` of the default
    selector (full refresh), then of the pool, social and ranking models for the day before the last."""
    from tasks.core.dbt_runner import run_dbt

    out: dict[str, Any] = {}
    for name, args, kw in (("full", [command], {}), ("nightly", [command, *NIGHTLY_SELECT], _nightly_vars(cfg))):
        t0 = time.perf_counter()
        result = run_dbt(cfg, args, **kw)
        seconds = time.perf_counter() - t0
        kinds: dict[str, int] = {}
        for r in result.results:
            kinds[str(r.node.resource_type)] = kinds.get(str(r.node.resource_type), 0) + 1
        out[name] = {"seconds": round(seconds, 2), "dbt_elapsed": round(result.elapsed_time, 2), "nodes": kinds}
        print(f"dbt {command} {name}: {seconds:.1f} s {kinds}", flush=True)
    out["seconds"] = round(out["full"]["seconds"] + out["nightly"]["seconds"], 2)
    return out


MART_TABLES = ("metrics_daily", "retention_daily", "ab_readout", "experiment_readout", "pool_candidates",
               "kol_features", "implicit_follows", "ranking_exposures")


def _row_counts(path: Path, tables: tuple[str, ...] = MART_TABLES) -> dict[str, int]:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        have = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables if t in have}


def _compiled_models(cfg: Any, args: list[str], kw: dict[str, Any]) -> tuple[list[Any], float]:
    """`dbt compile` of a selection: its model nodes in DAG order (dependencies first), and seconds."""
    from tasks.core.dbt_runner import run_dbt

    t0 = time.perf_counter()
    result = run_dbt(cfg, ["compile", *args], **kw)
    seconds = time.perf_counter() - t0
    nodes = {r.node.unique_id: r.node for r in result.results if str(r.node.resource_type) == "model"}
    ordered: list[Any] = []
    seen: set[str] = set()

    def visit(uid: str) -> None:
        if uid in seen or uid not in nodes:
            return
        seen.add(uid)
        for dep in nodes[uid].depends_on.nodes:
            visit(dep)
        ordered.append(nodes[uid])

    for uid in sorted(nodes):
        visit(uid)
    return ordered, seconds


def _script(nodes: list[Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """The statements materialising each model as dbt would (view, or table: incremental models on
    their first build are tables too), and what the script leaves out (hooks)."""
    statements, skipped = [], []
    for node in nodes:
        kind = node.config.materialized
        if kind == "ephemeral":
            continue  # inlined as CTEs into the compiled SQL of the models that use it
        relation = node.relation_name
        sql = node.compiled_code.strip().rstrip(";")
        schema = relation.rsplit(".", 1)[0]
        statements.append((node.name, f"create schema if not exists {schema}"))
        what = "view" if kind == "view" else "table"
        statements.append((node.name, f"create or replace {what} {relation} as (\n{sql}\n)"))
        if node.config.post_hook or node.config.pre_hook:
            skipped.append(f"{node.name}: {len(node.config.pre_hook)} pre-hook(s), "
                           f"{len(node.config.post_hook)} post-hook(s)")
    return statements, skipped


def _run_script(path: Path, statements: list[tuple[str, str]], sql_file: Path) -> tuple[float, dict[str, float]]:
    """Run `statements` in one DuckDB connection on `path`; seconds in all and per model."""
    import duckdb

    sql_file.write_text(";\n\n".join(s for _, s in statements) + ";\n")
    per_model: dict[str, float] = {}
    t0 = time.perf_counter()
    with duckdb.connect(str(path)) as con:
        for name, statement in statements:
            s0 = time.perf_counter()
            con.execute(statement)
            per_model[name] = per_model.get(name, 0.0) + time.perf_counter() - s0
    return time.perf_counter() - t0, {k: round(v, 2) for k, v in per_model.items()}


def _with_warehouse(cfg: Any, path: Path) -> Any:
    return cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"warehouse": str(path.resolve())})})


def _step_dbt_overhead(cfg: Any, root: Path) -> dict[str, Any]:
    """dbt run (models only) and the compiled SQL as one DuckDB script, each on a copy of the
    warehouse as ingest left it; the script's tables' row counts checked against dbt's."""
    pristine = root / "warehouse.post_ingest.duckdb"
    run_db, script_db = root / "overhead_run.duckdb", root / "overhead_script.duckdb"
    for db in (run_db, script_db):
        db.unlink(missing_ok=True)
        shutil.copyfile(pristine, db)
    run = _dbt_pair(_with_warehouse(cfg, run_db), "run")
    script_cfg = _with_warehouse(cfg, script_db)
    out: dict[str, Any] = {"run": run, "script": {}}
    for name, args, kw in (("full", [], {}), ("nightly", NIGHTLY_SELECT, _nightly_vars(cfg))):
        nodes, compile_s = _compiled_models(script_cfg, args, kw)
        statements, skipped = _script(nodes)
        seconds, per_model = _run_script(script_db, statements, root / f"overhead_{name}.sql")
        out["script"][name] = {"seconds": round(seconds, 2), "compile_seconds": round(compile_s, 2),
                               "models": len(nodes), "skipped": skipped, "per_model": per_model}
        print(f"script {name}: {len(nodes)} models in {seconds:.1f} s (compile {compile_s:.1f} s); "
              f"left out: {skipped or 'nothing'}", flush=True)
    out["script"]["seconds"] = round(out["script"]["full"]["seconds"] + out["script"]["nightly"]["seconds"], 2)
    names = tuple(n.name for n in nodes)  # the nightly's models
    dbt_rows, script_rows = _row_counts(run_db), _row_counts(script_db)
    out["rows_equal"] = dbt_rows == script_rows
    out["mart_rows"] = dbt_rows
    if not out["rows_equal"]:
        out["rows_script"] = script_rows
    print(f"row counts dbt run vs script equal: {out['rows_equal']} ({names})", flush=True)
    for db in (run_db, script_db):
        db.unlink(missing_ok=True)
    out["seconds"] = round(run["seconds"] + out["script"]["seconds"], 2)
    return out


def _step_rerender(cfg: Any, root: Path) -> dict[str, Any]:
    """On a copy of the warehouse: the nightly models for the last day (a new day), then the same run
    again (a re-render of an already built day); seconds per invocation and per model."""
    from tasks.core.dbt_runner import run_dbt

    copy = root / "rerender.duckdb"
    shutil.copyfile(cfg.warehouse_path, copy)
    c = _with_warehouse(cfg, copy)
    out: dict[str, Any] = {}
    for name in ("new_day", "rerender"):
        t0 = time.perf_counter()
        result = run_dbt(c, ["run", *NIGHTLY_SELECT], **_nightly_vars(cfg, _last_day(cfg)))
        seconds = time.perf_counter() - t0
        models = {r.node.name: round(r.execution_time, 2) for r in result.results}
        out[name] = {"seconds": round(seconds, 2), "models": models}
        print(f"dbt run {name}: {seconds:.1f} s {models}", flush=True)
    copy.unlink()
    out["seconds"] = out["rerender"]["seconds"]
    return out


def _cold(cfg: Any, day: dt.date, model: str) -> Any:
    """A first version of `model` trained cold on one day, one epoch, made current (train_prep)."""
    from tasks.ranking import full
    from tasks.retrieval import two_tower

    if model == "two_tower":
        tt = cfg.retrieval.two_tower.model_copy(update={"first_epochs": 1})
        retrieval = cfg.retrieval.model_copy(update={"two_tower": tt, "train_window_days": 1})
        c = cfg.model_copy(update={"retrieval": retrieval})
        return two_tower.train(c, day, make_current=True)
    fr = cfg.ranking.full.model_copy(update={"first_epochs": 1, "first_window_days": 1})
    c = cfg.model_copy(update={"ranking": cfg.ranking.model_copy(update={"full": fr})})
    return full.train(c, day, make_current=True)


def child(step: str, config: Path, root: Path, spark_memory: str, spark_master: str) -> dict[str, Any]:
    """Run one step; its result (seconds measured here too, rows)."""
    cfg = _config(config, "spark" if step == "marts_spark" else None)
    last = _last_day(cfg)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if step == "simulate":
        from tasks.simulator import simulate

        for folder in (cfg.landing_dir, cfg.ground_truth_dir):
            shutil.rmtree(folder, ignore_errors=True)
        summary = simulate(cfg.simulator, cfg.landing_dir, cfg.ground_truth_dir)
        out["rows"] = {"events": summary.events}
    elif step == "ingest":
        from tasks.experiments.assignment import publish_assignments
        from tasks.ingest.daily import publish_warehouse
        from tasks.ingest.load import load_dir

        results = load_dir(cfg.landing_dir, cfg)
        counts = publish_warehouse(cfg)
        publish_assignments(cfg)
        out["rows"] = {"valid": sum(r.valid_rows for r in results),
                       "quarantined": sum(r.quarantined_rows for r in results), **counts}
    elif step == "marts_duckdb":
        out.update(_dbt_pair(cfg, "build"))
        out["rows"] = _row_counts(cfg.warehouse_path)
    elif step == "rerender":
        out.update(_step_rerender(cfg, root))
        out["rows"] = {f"{name} {model}": out[name]["models"].get(model) for name in ("new_day", "rerender")
                       for model in ("pool_candidates", "int_item_hour_segment_stats")}
    elif step == "dbt_overhead":
        out.update(_step_dbt_overhead(cfg, root))
        out["rows"] = {"run_s": out["run"]["seconds"], "script_s": out["script"]["seconds"],
                       "run/script": round(out["run"]["seconds"] / out["script"]["seconds"], 2),
                       "rows_equal": out["rows_equal"]}
    elif step == "marts_spark":
        os.environ["RECPIPE_SPARK_MASTER"] = spark_master
        os.environ["PYSPARK_SUBMIT_ARGS"] = f"--driver-memory {spark_memory} pyspark-shell"
        shutil.rmtree(root / "data" / "spark", ignore_errors=True)
        # On spark, run_dbt points the warehouse's views at the Spark build (views_over_spark): a
        # copy of the warehouse as ingest left it, so the DuckDB steps' tables stay as they are.
        copy = root / "spark_warehouse.duckdb"
        shutil.copyfile(root / "warehouse.post_ingest.duckdb", copy)
        cfg = _with_warehouse(cfg, copy)
        out.update(_dbt_pair(cfg, "run"))
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        out["rows"] = {t: spark.table(f"main.{t}").count() for t in MART_TABLES
                       if spark.catalog.tableExists(f"main.{t}")}
        spark.stop()
        copy.unlink(missing_ok=True)
    elif step == "pools":
        from tasks.pools.refresh import end_of_day, refresh_pools

        outcomes = refresh_pools(cfg, [end_of_day(last)])
        out["rows"] = {o.pool: o.size for o in outcomes}
        out["published"] = sum(o.published for o in outcomes)
    elif step == "kol":
        from tasks.social import kol

        kol.build_features(cfg, last.isoformat(), last.isoformat())
        out["rows"] = kol.score_days(cfg, last.isoformat(), last.isoformat())[0]
    elif step == "implicit_follows":
        from tasks.social import implicit_follows

        implicit_follows.build(cfg, last.isoformat(), last.isoformat())
        out["rows"] = {"checked": implicit_follows.validate_days(cfg, last.isoformat(), last.isoformat())}
    elif step == "train_prep":
        from tasks.core import registry
        from tasks.ranking.data import build_exposures

        for model in ("two_tower", "full_ranking", "preranking"):
            shutil.rmtree(registry.model_store(cfg, model), ignore_errors=True)
        build_exposures(cfg, last - dt.timedelta(days=1), last)
        tt = _cold(cfg, last - dt.timedelta(days=2), "two_tower")
        fr = _cold(cfg, last - dt.timedelta(days=1), "full_ranking")
        out["rows"] = {"two_tower_examples": tt.meta["examples"], "full_ranking_examples": fr.meta["examples"]}
    elif step == "train_two_tower":
        from tasks.core import artifacts, registry
        from tasks.retrieval import nightly

        name = nightly.train_candidate(cfg, "two_tower", last)
        meta = artifacts.load(registry.model_store(cfg, "two_tower"), name).meta
        out["rows"] = {"version": name, "examples": meta["examples"], "window": meta["training_window"]}
    elif step == "gate_two_tower":
        from tasks.core import artifacts, registry
        from tasks.retrieval import nightly

        store = registry.model_store(cfg, "two_tower")
        candidate = max(v.name for v in artifacts.list_versions(store))
        nightly.evaluate_candidate(cfg, "two_tower", candidate, last)
        row = nightly.gate(cfg, "two_tower", candidate, last)
        keys = ("candidate_recall", "current_recall", "n_users", "passed", "gate_reason")
        out["rows"] = {k: row.get(k) for k in keys}
        if row.get("passed"):
            nightly.publish(cfg, "two_tower", candidate)
        else:  # the ANN step needs the candidate's vectors: made current anyway, and said so
            artifacts.switch(store, candidate)
            out["note"] = "gate rejected the candidate; switched to it by hand for the ann step"
    elif step == "rank_score":
        from tasks.ranking import nightly as ranking

        scored = ranking.score(cfg, last)
        try:
            gated = ranking.gate(cfg, last)
        except ranking.DistillationRejected as e:
            gated = {"passed": False, "reason": str(e)[:300]}
        out["rows"] = {"scored": scored, "gate_passed": gated.get("passed")}
    elif step == "train_preranking":
        from tasks.core import artifacts, registry
        from tasks.ranking import nightly as ranking

        result = ranking.train_preranking(cfg, last)
        version = artifacts.current(registry.model_store(cfg, ranking.PRERANKING))
        out["rows"] = {**result, "examples": version.meta.get("examples") if version else None}
    elif step == "train_full":
        from tasks.core import artifacts, registry
        from tasks.ranking import nightly as ranking
        from tasks.ranking.distillation import FULL_RANKING

        result = ranking.train_full(cfg, last)
        version = artifacts.current(registry.model_store(cfg, FULL_RANKING))
        out["rows"] = {**result, "examples": version.meta.get("examples")}
    elif step == "ann":
        from tasks.retrieval.ann_refresh import refresh

        outcomes = [refresh(cfg, model, pool.name) for model in cfg.ann.vector_models for pool in cfg.pools]
        out["rows"] = {o.pool: f"{o.status} {o.n_items or 0} items {o.kind or ''} recall {o.recall}" for o in outcomes}
    else:
        raise ValueError(step)
    out["child_seconds"] = round(time.perf_counter() - t0, 2)
    out["child_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["loadavg_1m_5m_at_end"] = [round(x, 2) for x in os.getloadavg()[:2]]  # other jobs on the machine
    return out


# ---------------------------------------------------------------------------------------------
# The parent side: sizes, one child per step, peak memory, growth, the table.


def _tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and its descendants."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_child(argv: list[str], log: Path, timeout: float | None) -> dict[str, Any]:
    """Run a step's child, its output appended to `log`: wall seconds, peak MiB (process tree,
    sampled; and wait4's high-water mark), its JSON result or its failure."""
    with log.open("a") as out:
        out.write(f"\n===== {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC: {' '.join(argv)}\n")
        out.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=out, text=True, start_new_session=True)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        lines: list[str] = []

        def read() -> None:  # the child's stdout into the log; its last line is the result
            for line in proc.stdout:
                lines.append(line)
                out.write(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout and time.perf_counter() - started > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group (start_new_session)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        reader.join(timeout=10)
        proc.returncode = os.waitstatus_to_exitcode(status)
    tree, own = peak[0] / 2**20, usage.ru_maxrss / 1024
    result: dict[str, Any] = {"seconds": round(seconds, 2), "peak_mib": round(max(tree, own), 1),
                              "peak_tree_sampled_mib": round(tree, 1), "wait4_maxrss_mib": round(own, 1)}
    if timed_out:
        result.update(status="timeout", error=f"killed after {timeout:.0f} s")
    elif proc.returncode:
        result.update(status="failed", error=f"exit {proc.returncode}; see the log")
    else:
        try:
            result.update(status="ok", **json.loads(lines[-1]))
        except (IndexError, json.JSONDecodeError):
            result.update(status="failed", error="no result line")
    return result


def size_config(root: Path, users: int, items: int, days: int) -> Path:
    """The platform config of one size: the shipped config with its data under root/data."""
    import yaml

    from tasks.core.config import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["paths"]["data_root"] = str((root / "data").resolve())
    raw["simulator"].update({"users": users, "items": items, "days": days})
    root.mkdir(parents=True, exist_ok=True)
    path = root / "recpipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _short(rows: Any) -> str:
    if isinstance(rows, dict):
        return ", ".join(f"{k}={v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}"
                         for k, v in rows.items())
    return str(rows)


def run_size(args: argparse.Namespace, users: int, items: int, label: str, log: Path) -> dict[str, Any]:
    """Every selected step at one size, in order; a failed step is recorded and the next ones run."""
    root = args.data_dir / f"u{users}-i{items}-d{args.days}"
    config = size_config(root, users, items, args.days)
    data = root / "data"
    results: dict[str, Any] = {}
    saved = root / "results.json"  # this size's last measurements, step by step
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    for step in args.steps:
        if label == "small" and args.reuse_small and previous.get(step, {}).get("status") == "ok":
            results[step] = {**previous[step], "reused": True}
            print(f"[{label}] {step:<16} reused from {saved}: {results[step]['seconds']:8.1f} s", flush=True)
            continue
        if step == "simulate":
            marker = root / "simulated.json"
            want = {"users": users, "items": items, "days": args.days}
            if marker.exists() and json.loads(marker.read_text()).get("size") == want:
                results[step] = {**json.loads(marker.read_text())["result"], "reused": True}
                print(f"[{label}] {step:<16} reused: {results[step]['seconds']:8.1f} s (measured when simulated), "
                      f"{_short(results[step].get('rows'))}", flush=True)
                continue
        if step == "ingest":  # a fresh lake and warehouse, no models, indexes or Spark tables
            for name in ("lake", "artifacts", "spark", "alerts", "warehouse.duckdb", "warehouse.duckdb.wal", "dbt",
                         "reports"):
                target = data / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        if step in ("dbt_overhead", "marts_spark") and not (root / "warehouse.post_ingest.duckdb").exists():
            results[step] = {"status": "failed", "error": "no copy of the post-ingest warehouse: run ingest first"}
            continue
        timeout = args.spark_timeout if step == "marts_spark" else args.step_timeout
        if step == "marts_spark" and args.spark_at == "small" and label == "full":
            results[step] = {"status": "skipped", "error": "--spark-at small"}
            print(f"[{label}] {step:<16} skipped (--spark-at small)", flush=True)
            continue
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--config", str(config),
                "--data-dir", str(root), "--spark-memory", args.spark_memory, "--spark-master", args.spark_master]
        os.environ["RECPIPE_DATA_DIR"] = str(data)
        os.environ["RECPIPE_CONFIG"] = str(config)
        r = run_child(argv, log, timeout)
        results[step] = r
        if step == "simulate" and r["status"] == "ok":
            size = {"users": users, "items": items, "days": args.days}
            (root / "simulated.json").write_text(json.dumps({"size": size, "result": r}))
        if step == "ingest" and r["status"] == "ok":
            shutil.copyfile(data / "warehouse.duckdb", root / "warehouse.post_ingest.duckdb")
        previous[step] = r
        saved.write_text(json.dumps(previous, indent=1, default=str))
        what = "(data preparation) " if step in PREPARATION else ""
        extra = f"  [{r.get('status')}: {r.get('error')}]" if r["status"] != "ok" else ""
        print(f"[{label}] {step:<16} {r['seconds']:8.1f} s  peak {r['peak_mib']:8,.0f} MiB  {what}"
              f"{_short(r.get('rows'))}{extra}", flush=True)
    for step in STEPS:  # the size's other steps, as measured by an earlier invocation (--steps)
        if step not in results and step in previous:
            results[step] = {**previous[step], "reused": True}
    return {step: results[step] for step in STEPS if step in results}


def exponent(small: float | None, full: float | None, fraction: float) -> float | None:
    if not small or not full or small <= 0 or full <= 0:
        return None
    return math.log(full / small) / math.log(1 / fraction)


def summarise(runs: dict[str, dict[str, Any]], fraction: float | None) -> list[dict[str, Any]]:
    rows = []
    full = runs["full"]
    small = runs.get("small", {})
    for step, r in full.items():
        s = small.get(step, {})
        row: dict[str, Any] = {"step": step, "status": r.get("status"), "seconds": r.get("seconds"),
                               "peak_mib": r.get("peak_mib"), "small_seconds": s.get("seconds"),
                               "small_peak_mib": s.get("peak_mib")}
        ok = r.get("status") in ("ok", None) and s.get("status") in ("ok", None)
        if fraction and ok:
            for what in ("seconds", "peak_mib"):
                e = exponent(s.get(what), r.get(what), fraction)
                row[f"{what}_exponent"] = None if e is None else round(e, 3)
                if e is not None:
                    row[f"{what}_10x"] = round(r[what] * 10 ** e, 1)
                    row[f"{what}_100x"] = round(r[what] * 100 ** e, 1)
        rows.append(row)
    return rows


def _ratios(run: dict[str, Any]) -> dict[str, Any]:
    """dbt build / script, dbt run / script, Spark run / DuckDB run, at one size."""
    out: dict[str, Any] = {}
    over, duck, spark = run.get("dbt_overhead", {}), run.get("marts_duckdb", {}), run.get("marts_spark", {})
    if over.get("status") == "ok":
        script = over["script"]
        for part in ("full", "nightly"):
            out[f"dbt_run_over_script_{part}"] = round(over["run"][part]["seconds"] / script[part]["seconds"], 2)
            if duck.get("status") == "ok":
                out[f"dbt_build_over_script_{part}"] = round(duck[part]["seconds"] / script[part]["seconds"], 2)
        out["dbt_run_over_script"] = round(over["run"]["seconds"] / script["seconds"], 2)
        if duck.get("status") == "ok":
            out["dbt_build_over_script"] = round(duck["seconds"] / script["seconds"], 2)
        if spark.get("status") == "ok":
            for part in ("full", "nightly"):
                out[f"spark_over_duckdb_run_{part}"] = round(spark[part]["seconds"] / over["run"][part]["seconds"], 2)
            out["spark_over_duckdb_run"] = round(spark["seconds"] / over["run"]["seconds"], 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--data-dir", type=Path, required=True, help="one folder per size under it (simulations reused)")
    p.add_argument("--growth-fraction", type=float, default=0.1,
                   help="the small run's share of users and items, to measure growth (0: no small run)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="a subset, in pipeline order")
    p.add_argument("--spark-memory", default="12g", help="the Spark driver's memory (local mode: all of Spark)")
    p.add_argument("--spark-master", default="local[*]")
    p.add_argument("--spark-timeout", type=float, default=2400, help="seconds before the Spark step is killed")
    p.add_argument("--step-timeout", type=float, default=None, help="seconds before any other step is killed")
    p.add_argument("--spark-at", choices=("both", "small"), default="both",
                   help="small: Spark only at the growth-fraction size")
    p.add_argument("--reuse-small", action="store_true",
                   help="take the small run's steps from its folder's results.json when they succeeded there")
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
        result = child(args.child, args.config, args.data_dir, args.spark_memory, args.spark_master)
        sys.stdout.flush()
        print(json.dumps(result, default=str), flush=True)
        return 0

    args.steps = [s for s in STEPS if s in args.steps]
    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir = args.data_dir.resolve()
    log = args.data_dir / "bench_scale.log"
    started = dt.datetime.now(dt.UTC)
    print(f"scale benchmark: {args.users:,} users x {args.items:,} items x {args.days} days; "
          f"growth run at {args.growth_fraction}; steps {' '.join(args.steps)}; log {log}", flush=True)
    sizes = []
    if args.growth_fraction:
        sizes.append(("small", max(1, round(args.users * args.growth_fraction)),
                      max(1, round(args.items * args.growth_fraction))))
    sizes.append(("full", args.users, args.items))
    runs: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "machine": {"cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "days": args.days, "growth_fraction": args.growth_fraction, "spark_memory": args.spark_memory,
        "spark_master": args.spark_master, "sizes": {label: {"users": u, "items": i} for label, u, i in sizes},
    }
    out = args.data_dir / "bench_scale.json"
    for label, users, items in sizes:
        runs[label] = run_size(args, users, items, label, log)
        report["runs"] = runs
        out.write_text(json.dumps(report, indent=1, default=str))  # after each size: a killed run keeps the first

    fraction = args.growth_fraction or None
    table = summarise(runs, fraction)
    report.update(table=table, ratios={label: _ratios(run) for label, run in runs.items()},
                  finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    out.write_text(json.dumps(report, indent=1, default=str))

    def f(v: Any, spec: str = ",.1f") -> str:
        return "-" if v is None else format(v, spec)

    print(f"\n{'step':<17} {'status':<8} {'seconds':>9} {'peak MiB':>9} {'small s':>8} {'exp t':>6} "
          f"{'s @10x':>10} {'s @100x':>11} {'exp mem':>7} {'MiB @10x':>10} {'MiB @100x':>11}")
    for r in table:
        print(f"{r['step']:<17} {r['status']!s:<8} {f(r['seconds']):>9} {f(r['peak_mib'], ',.0f'):>9} "
              f"{f(r['small_seconds']):>8} {f(r.get('seconds_exponent'), '.2f'):>6} {f(r.get('seconds_10x')):>10} "
              f"{f(r.get('seconds_100x')):>11} {f(r.get('peak_mib_exponent'), '.2f'):>7} "
              f"{f(r.get('peak_mib_10x'), ',.0f'):>10} {f(r.get('peak_mib_100x'), ',.0f'):>11}")
    for label, ratios in report["ratios"].items():
        print(f"ratios ({label}): {json.dumps(ratios)}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
