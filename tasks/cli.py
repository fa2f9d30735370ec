"""The `recpipe` command line: simulate, load, demo, the DAGs by hand (metrics, pools, kol, implicit-follows,
train), evaluate, recommend, serve, models, report, alerts, airflow-setup, config."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path

from tasks.core.config import ALL, ConfigError, ExperimentConfig, PlatformConfig, load_config

log = logging.getLogger("recpipe")
# Each command imports its domain modules when it runs: importing all of them (torch, GX, Airflow,
# faiss) at start-up takes ~9.7 s against ~0.5 s for `recpipe --help` (measured).


def _cmd_config(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    for name in ("landing_dir", "lake_dir", "warehouse_path", "ground_truth_dir", "alerts_log", "reports_dir"):
        print(f"{name}: {getattr(cfg, name)}")
    return 0


def _cmd_simulate(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    from tasks.simulator import simulate

    landing = Path(args.out) if args.out else cfg.landing_dir
    summary = simulate(
        cfg.simulator,
        landing,
        cfg.ground_truth_dir,
        users=args.users,
        items=args.items,
        days=args.days,
        seed=args.seed,
        start_date=args.start_date,
    )
    print(summary)
    print(f"landing batches in {landing}; ground truth in {cfg.ground_truth_dir}")
    return 0


def _cmd_load(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Load a batch folder or a dump of dt=* folders: a progress bar, each batch's summary (JSON) in
    <data>/logs/load.log (on the terminal with --verbose), then one line of totals."""
    from tasks.core.console import progress, quiet
    from tasks.core.warehouse import refresh_views
    from tasks.ingest.load import load_dir

    started = time.perf_counter()
    with quiet(cfg.data_root / "logs" / "load.log", args.verbose):
        results = load_dir(Path(args.dir), cfg, day=args.day)
        for r in results:
            print(json.dumps(r.summary(), default=str))
        refresh_views(cfg)
        days = sorted(r.day for r in results if r.day is not None)
        span = f", {days[0]} .. {days[-1]}" if days else ""
        progress(f"loaded {len(results):,} batches{span}: {sum(r.valid_rows for r in results):,} rows valid, "
                 f"{sum(r.quarantined_rows for r in results):,} quarantined, in {time.perf_counter() - started:.0f}s; "
                 f"lake {cfg.lake_dir}, warehouse {cfg.warehouse_path} (views raw.*, raw.quarantine)")
    return 0


def _cmd_compact(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Merge the lake's day files of every month that ends before --before (default: today) into one
    file per table and month, refresh the raw views; one line of totals."""
    from tasks.core.console import progress
    from tasks.core.lake import compact
    from tasks.core.warehouse import refresh_views

    started = time.perf_counter()
    before = args.before or dt.datetime.now(dt.UTC).date()
    done = compact(cfg.lake_dir, before)
    refresh_views(cfg)
    files = sum(1 for _ in cfg.lake_dir.glob("*/*/*.parquet"))
    progress(f"compacted {sum(c.day_files for c in done):,} day files into {len(done):,} month files (months "
             f"before {before:%Y-%m}) in {time.perf_counter() - started:.0f}s; lake {cfg.lake_dir}: {files:,} files")
    return 0


def _cmd_convert_movielens(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    from tasks.ingest.movielens import convert_movielens

    rows = convert_movielens(Path(args.src), Path(args.out))
    print(f"contract dump in {args.out}: {rows}; load it with `recpipe load {args.out}`")
    return 0


def _cmd_airflow_setup(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    from tasks.orchestration.local_airflow import setup_metadata

    setup_metadata(cfg)
    return 0


def _cmd_demo(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """The closed loop at demo size (config/demo.yaml): the organic warm-up, then the config's first
    experiment served by the recommendation path for --days days, through every DAG; its readout
    table and the platform summary at the end."""
    from tasks.experiments.readout import readout_brief, readout_table
    from tasks.reports.demo_summary import print_summary

    if not cfg.experiments:
        print("recpipe: the demo runs the config's first experiment; `experiments:` is empty", file=sys.stderr)
        return 2
    experiment = cfg.experiments[0]
    status = _run_experiment(cfg, experiment, args.days, args.verbose)
    if status:
        return status
    table = readout_table(cfg, experiment.name)
    with pd_options():
        print_summary(cfg)
        print(f"\nexperiment {experiment.name} ({args.days} served days; lift = arm / control - 1, 95% CI):")
        print(readout_brief(table).to_string(index=False))
    print(f"full readout: recpipe --config {os.environ.get('RECPIPE_CONFIG', 'config/recpipe.yaml')} "
          f"experiment readout {experiment.name}")
    return 0


def _run_dag(cfg: PlatformConfig, args: argparse.Namespace, dag_id: str, day: dt.date,
             conf: dict[str, str] | None = None) -> bool:
    """One DAG run for `day` (conf "through": the last day of a range), quietly: the Airflow, dbt and
    task logs go to <data>/logs/<dag_id>.log unless --verbose, the terminal gets one line with the
    days, the outcome and the seconds. False if the run failed."""
    from tasks.core.console import progress, quiet
    from tasks.orchestration.local_airflow import DagRunFailed, run_dag_for_days, setup_metadata

    through = dt.date.fromisoformat(conf["through"]) if conf and conf.get("through") else day
    n = (through - day).days + 1
    span = f"{day} .. {through} ({n:,} days)" if n > 1 else str(day)
    started = time.perf_counter()
    with quiet(cfg.data_root / "logs" / f"{dag_id}.log", args.verbose):
        setup_metadata(cfg)
        try:
            run_dag_for_days(dag_id, [day], conf=conf)
        except DagRunFailed as e:
            progress(f"{dag_id} {span}: FAILED after {time.perf_counter() - started:.0f}s: {e}")
            return False
        progress(f"{dag_id} {span}: success in {time.perf_counter() - started:.0f}s")
    return True


def _cmd_metrics(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    through = (args.end or args.start).isoformat()
    return 0 if _run_dag(cfg, args, "daily_metrics", args.start, {"through": through}) else 1


def _cmd_pools(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    through = (args.end or args.start).isoformat()
    return 0 if _run_dag(cfg, args, "content_pools", args.start, {"through": through}) else 1


def _cmd_social(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Run the kol_scoring or implicit_follows DAG over --day .. --through, then print the last day."""
    from tasks.core.warehouse import connect

    last = args.through or args.day
    if not _run_dag(cfg, args, args.dag_id, args.day, {"through": last.isoformat()}):
        return 1
    query = {
        "kol_scoring": "select user_id, shares, visits, round(kol_score, 3) as kol_score, is_kol from kol_scores "
        "where day = ? order by kol_score desc, user_id limit 10",
        "implicit_follows": "select count(*) as pairs, count(distinct user_id) as users, round(avg(affinity), 3) "
        "as mean_affinity from implicit_follows where day = ?",
    }[args.dag_id]
    with connect(cfg, read_only=True) as con:
        print(f"{args.dag_id} {last}:\n{con.execute(query, [last]).df().to_string(index=False)}")
    return 0


def _cmd_evaluate(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Fit the channels on the window ending on --day, score them on the following days' clicks,
    store the rows in retrieval_eval, print segment 'all' and rewrite the report."""
    from tasks.reports.page import write_report
    from tasks.retrieval.evaluate import evaluate, few_users_warning, write_results

    if args.train_window_days:
        cfg = cfg.model_copy(update={"retrieval": cfg.retrieval.model_copy(update={"train_window_days": args.train_window_days})})
    if args.funnel:
        return _evaluate_funnel(cfg, args)
    results = evaluate(cfg, args.day, args.channels.split(",") if args.channels else None, args.eval_days)
    write_results(cfg, results)
    overall = results[results.segment == ALL]
    table = overall.pivot_table(index="channel", columns=["metric", "k"], values="value", sort=False)
    users = int(overall.n_users.iloc[0])
    print(f"retrieval evaluation: trained through {args.day}, {users} users with clicks in the next "
          f"{args.eval_days} day(s)\n{table.round(4).to_string()}")
    k0 = cfg.evaluation.k[0]
    recall = results[(results.metric == "recall") & (results.k == k0)]
    groups = recall.pivot_table(index="channel", columns="segment", values="value", sort=False)
    users = recall.groupby("segment").n_users.max()
    groups.columns = [f"{g} ({users[g]})" for g in groups.columns]
    print(f"Recall@{k0} per user group (users):\n{groups.round(4).to_string()}")
    ci = recall[recall.segment == ALL].set_index("channel")
    print(f"Recall@{k0}, {1 - cfg.evaluation.ci_alpha:.0%} bootstrap CI over users:\n" + "\n".join(
        f"  {c}: {r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}] over {r.n_users} users" for c, r in ci.iterrows()))
    if warning := few_users_warning(results, cfg.evaluation.min_users):
        print(f"WARNING: {warning}")
    print(f"rows in retrieval_eval; report: {write_report(cfg)}")
    return 0


def _evaluate_funnel(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """The feeds for --day + 1 (artifacts current now) of the users who click then, scored next to
    the merged candidates, popularity and each channel; rows in funnel_eval, the report rewritten."""
    from tasks.reports.page import write_report
    from tasks.reports.serving import funnel_tables
    from tasks.retrieval.evaluate import few_users_warning
    from tasks.serving.evaluate import evaluate_funnel, write_results

    results = evaluate_funnel(cfg, args.day, args.strategy, args.eval_days)
    write_results(cfg, results)
    t = funnel_tables(results)
    print(f"funnel evaluation: data through {args.day}, strategy {results.strategy.iloc[0]}, feeds scored on the "
          f"clicks of the next {args.eval_days} day(s); candidates and channels ordered by pre-rank relevance")
    with pd_options():
        print(f"segment all:\n{t.overall.round(4).to_string()}\nRecall@{t.k} per user group (users):\n"
              f"{t.groups.round(4).to_string()}\nmean candidates per user after each stage:\n{t.funnel.round(1).to_string()}")
    print("\n".join(t.checks))
    if warning := few_users_warning(results, cfg.evaluation.min_users):
        print(f"WARNING: {warning}")
    print(f"rows in funnel_eval; report: {write_report(cfg)}")
    return 0


def _cmd_recommend(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Print one user's feed (the recommendation path over the artifacts current now, with the
    data through --day), with each item's channels, scores and decision; --explain adds every
    head, fusion term and the funnel counts."""
    import numpy as np

    from tasks.serving.context import last_data_day, load_context
    from tasks.serving.funnel import recommend

    day = args.day or last_data_day(cfg)
    ctx = load_context(cfg, day)
    feeds = recommend(ctx, np.array([args.user]), args.strategy)
    rows = feeds.rows.drop(columns=["user_id"])
    if not args.explain:
        rows = rows[[c for c in ("position", "item_id", "channels", "decision", "prerank", "score") if c in rows]]
    print(f"feed of user {args.user} for {day + dt.timedelta(days=1)} (data through {day}), strategy "
          f"{feeds.rows.strategy.iloc[0] if len(feeds.rows) else args.strategy or cfg.serving.default_strategy}; "
          f"versions {ctx.versions}")
    with pd_options():
        print(rows.round(4).to_string(index=False))
        if args.explain:
            print("funnel (candidates after each stage; from_<channel>: retrieved by the channel):")
            print(feeds.funnel.drop(columns=["user_id"]).T.rename(columns={0: "count"}).to_string())
    if ctx.broken:
        print(f"served without: {ctx.broken}")
    return 0


def _cmd_serve(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Serve feeds over HTTP (GET /feed/{user_id}, /healthz, /metrics; tasks/serving/api.py) from the
    artifacts current now, switching to new versions without a restart."""
    import uvicorn

    from tasks.serving.api import create_app

    uvicorn.run(create_app(cfg, args.day), host=args.host, port=args.port)
    return 0


def pd_options():
    """Wide, untruncated tables for the terminal."""
    import pandas as pd

    return pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 60)


def _cmd_feeds(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Run the feeds DAG for the data through --day (default: the latest loaded), then print the
    published version's summary."""
    from tasks.core import artifacts, registry
    from tasks.serving.context import last_data_day

    if not _run_dag(cfg, args, "feeds", args.day or last_data_day(cfg)):
        return 1
    version = artifacts.require_current(registry.feed_store(cfg))
    print(f"feeds {version.name}: {json.dumps(version.meta, default=str)}")
    return 0


def _cmd_train(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Run the nightly_training DAG for the data through --day, then print its gate rows."""
    from tasks.core.warehouse import connect

    trained = _run_dag(cfg, args, "nightly_training", args.day, {"day": args.day.isoformat()})
    with connect(cfg, read_only=True) as con:
        gates = con.execute(
            "select model, candidate, current, round(candidate_recall, 4) as recall, round(current_recall, 4) as current_recall, "
            "round(recall_drop, 3) as drop, round(drop_ci_low, 3) as drop_ci_low, round(drop_ci_high, 3) as drop_ci_high, "
            "n_users, round(popularity_recall, 4) as popularity, gate_reason, passed from model_gate where day = ? "
            "order by model", [args.day - dt.timedelta(days=1)]
        ).df()
    print(f"nightly_training {args.day} (trained through the day before):\n{gates.to_string(index=False)}")
    _cmd_models(cfg, argparse.Namespace(action="list", model=None, version=None))
    return 0 if trained else 1


def _cmd_fault_drill(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Plant each fault in --day's full-ranking predictions: does the gate stop it, and what would
    the pre-ranker's next-day AUC be, gated vs ungated."""
    from tasks.ranking.fault_drill import drill

    rows = drill(cfg, args.day)
    cols = ["fault", "caught", "auc_gated", "auc_ungated", "auc_label_only", "failed_expectations"]
    print(f"fault drill on {args.day} (pre-ranking AUC on {args.day + dt.timedelta(days=1)}, mean over targets):")
    print(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}", max_colwidth=90))
    return 0


def _cmd_special_groups(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Fit the residual model and the calibrator on the days before --day, on the scores of the
    full ranker trained before those days (predictions it never trained on, as served), and print
    calibration error, calibration ratio and AUC per head and segment on --day, before and after;
    each small model becomes current only if it lowers the log loss on --day beyond noise."""
    from tasks.ranking import special_groups as sg
    from tasks.ranking.distillation import scorer_for

    s = cfg.ranking.special_groups
    last = args.day - dt.timedelta(days=1)
    full = scorer_for(cfg, args.day - dt.timedelta(days=s.days))
    residual = sg.train_residual(cfg, last, full)
    calibrator = sg.train_calibrator(cfg, last, full)
    scored = sg.score_full(cfg, full, args.day, args.day)
    rows = sg.evaluate(cfg, args.day, full, residual, calibrator, scored=scored)
    sg.write_eval(cfg, rows)
    wide = rows.pivot_table(index=["segment", "head"], columns="model", values=["ece", "ratio", "auc"])
    print(f"special groups on {args.day} (full ranker {full.name}; small models trained on the {s.days} days before):")
    print(wide.round(4).to_string())
    print(f"kept only where the log loss on {args.day} drops beyond noise (paired bootstrap over users):")
    for v in (sg.keep_if_better(cfg, small, scored) for small in (residual, calibrator)):
        print(f"  {v.model} {v.version}: log loss {v.loss_full:.5f} -> {v.loss_model:.5f} over {v.n_users} users, "
              f"difference CI [{v.low:+.5f}, {v.high:+.5f}]: {'kept (current)' if v.keep else 'not kept'}")
    return 0


def _cmd_models(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    from tasks.core import registry

    if args.action == "rollback":
        if not (args.model and args.version):
            print("recpipe models rollback: needs --model and --version", file=sys.stderr)
            return 2
        registry.rollback(cfg, args.model, args.version)
        print(f"{args.model}: current is now {args.version}")
        return 0
    rows = registry.describe(cfg, args.model)
    if not rows:
        print("no model versions yet")
    for r in rows:
        mark = "*" if r["current"] else " "
        print(f"{mark} {r['model']:<14} {r['version']:<30} {r['created_at'][:19]}  window {r['window']}  {r['metrics']}")
    return 0


def _cmd_report(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    from tasks.reports.page import write_report

    print(f"report: {write_report(cfg)}")
    return 0


def _cmd_alerts(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    from tasks.ops.alerts import read_alerts

    for a in read_alerts(cfg)[-args.last :]:
        print(f"{a['ts']}  {a['severity']:<8} {a['kind']:<13} {a['source']}: {a['title']}")
    if args.html:
        from tasks.ops.alert_pages import render_alert_pages

        print(f"alert pages: {render_alert_pages(cfg)}")
    return 0


def _cmd_experiment(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """`experiment run NAME`: the closed loop through the experiment's first --days served days;
    `experiment readout NAME`: its readout table; `experiment validity`: the readout's A/A coverage
    and a planted effect."""
    if args.action == "validity":
        return _experiment_validity(cfg, args)
    if args.name is None:
        print(f"recpipe: experiment {args.action} needs an experiment name", file=sys.stderr)
        return 2
    try:
        experiment = cfg.experiment(args.name)
    except KeyError as e:
        print(f"recpipe: {e.args[0]}", file=sys.stderr)
        return 2
    if args.action == "readout":
        from tasks.experiments.readout import readout_table
        from tasks.experiments.validity import truth_beside_readout

        table = readout_table(cfg, experiment.name)
        truth = truth_beside_readout(cfg, experiment, table)
        with pd_options():
            print(table.to_string(index=False))
            if not truth.empty:
                print("\nDAU against the simulator's ground truth (its latent return probabilities, the same "
                      "users and served days):")
                print(truth.round(4).to_string(index=False))
        return 0
    return _run_experiment(cfg, experiment, args.days, args.verbose)


def _experiment_validity(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """`experiment validity`: A/A coverage over --seeds organic simulations with --experiments A/A
    layers each, and a planted effect against its ground truth (docs/METHODS.md "Readout validity")."""
    from tasks.core.console import quiet, terminal
    from tasks.experiments.validity import run_validity, validity_dir

    print(f"recpipe experiment validity: {args.seeds} seeds x {args.experiments} A/A experiments + a planted "
          f"effect, {args.users:,} users, 14 + {args.days} days; results in {validity_dir(cfg)}")
    with quiet(validity_dir(cfg) / "validity.log", args.verbose):
        run_validity(cfg, args.seeds, args.experiments, args.users, args.items, args.days, args.planted, terminal())
    return 0


def _run_experiment(cfg: PlatformConfig, experiment: ExperimentConfig, days: int, verbose: bool) -> int:
    """The closed loop through `experiment`'s first `days` served days: one progress line per
    simulated day, the Airflow/dbt/task logs in the loop's log file (on the terminal if `verbose`)."""
    from tasks.core.console import progress, quiet, terminal
    from tasks.experiments.loop import first_served_day, is_closed_loop, log_path, run_loop
    from tasks.orchestration.local_airflow import DagRunFailed, run_dag_for_days, setup_metadata

    if not is_closed_loop(cfg):
        print("recpipe: the closed loop needs `simulator.exposure_policy: recpipe` in the config "
              "(the simulator is then served by the recommendation path)", file=sys.stderr)
        return 2
    if experiment.start < first_served_day(cfg):
        print(f"recpipe: experiment {experiment.name!r} starts {experiment.start}, before the first served day "
              f"{first_served_day(cfg)} (simulator.start_date + organic_days)", file=sys.stderr)
        return 2
    through = experiment.start + dt.timedelta(days=days - 1)
    if experiment.end is not None:
        through = min(through, experiment.end)
    print(f"recpipe experiment {experiment.name}: simulated days {cfg.simulator.start_date} .. {through}, "
          f"{cfg.simulator.users:,} users (served by the recommendation path from {first_served_day(cfg)})")
    started = time.perf_counter()
    with quiet(log_path(cfg), verbose):
        setup_metadata(cfg)
        done = run_loop(cfg, through, lambda dag_id, day, conf: run_dag_for_days(dag_id, [day], conf=conf),
                        (DagRunFailed,), terminal())
        failed = {k: v for k, v in done.items() if v != "success"}
        for key, message in sorted(failed.items()):
            progress(f"FAILED {key}: {message}")
        progress(f"{len(done)} DAG runs over {(through - cfg.simulator.start_date).days + 1} simulated days "
                 f"({len(failed)} failed by a gate) in {time.perf_counter() - started:.0f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `recpipe` (one sub-command per job)."""
    p = argparse.ArgumentParser(prog="recpipe", description=__doc__)
    p.add_argument("--config", help="platform config file (default: $RECPIPE_CONFIG or config/recpipe.yaml)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("config", help="validate the config and print it with resolved paths").set_defaults(
        func=_cmd_config
    )

    s = sub.add_parser("simulate", help="simulate days of the platform into the landing folder")
    s.add_argument("--users", type=int)
    s.add_argument("--items", type=int)
    s.add_argument("--days", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--start-date", type=dt.date.fromisoformat)
    s.add_argument("--out", help="landing folder (default: the config's)")
    s.set_defaults(func=_cmd_simulate)

    ld = sub.add_parser("load", help="validate a batch folder (CSV/Parquet) into the lake, with quarantine")
    ld.add_argument("dir", help="a batch folder, or a folder of dt=YYYY-MM-DD batch folders")
    ld.add_argument("--day", type=dt.date.fromisoformat, help="treat the folder as this day's batch")
    ld.set_defaults(func=_cmd_load)

    cp = sub.add_parser("compact", help="merge the lake's day files of every month that ends before --before "
                        "into one file per table and month (docs/CONTRACT.md, The lake)")
    cp.add_argument("--before", type=dt.date.fromisoformat,
                    help="compact the months that end before this day (default: today)")
    cp.set_defaults(func=_cmd_compact)

    ml = sub.add_parser("convert-movielens", help="turn MovieLens 100K (u.user, u.item, u.data) into a contract "
                        "dump (docs/CONTRACT.md)")
    ml.add_argument("--src", required=True, help="the ml-100k folder")
    ml.add_argument("--out", required=True, help="folder for users.csv, items.csv, events.csv")
    ml.set_defaults(func=_cmd_convert_movielens)

    sub.add_parser("airflow-setup", help="migrate the local Airflow metadata DB and create the pools").set_defaults(
        func=_cmd_airflow_setup
    )

    d = sub.add_parser("demo", help="the closed loop (make demo: config/demo.yaml): organic warm-up, then the "
                       "config's first experiment served by the recommendation path; its readout at the end")
    d.add_argument("--days", type=int, default=2, help="served days of the experiment (default: 2)")
    d.set_defaults(func=_cmd_demo)

    m = sub.add_parser("metrics", help="run the daily_metrics DAG over a day or a range of days (backfill)")
    m.add_argument("--start", type=dt.date.fromisoformat, required=True)
    m.add_argument("--end", type=dt.date.fromisoformat, help="last day, included (default: --start)")
    m.set_defaults(func=_cmd_metrics)

    pl = sub.add_parser("pools", help="run the content_pools DAG: refresh the daily pools at the end of each day")
    pl.add_argument("--start", type=dt.date.fromisoformat, required=True)
    pl.add_argument("--end", type=dt.date.fromisoformat, help="last day, included (default: --start)")
    pl.set_defaults(func=_cmd_pools)

    for name, dag_id, what in (
        ("kol", "kol_scoring", "KOL features and scores"),
        ("implicit-follows", "implicit_follows", "implicit follows (U2A2I)"),
    ):
        so = sub.add_parser(name, help=f"run the {dag_id} DAG: {what} for a day or a range of days")
        so.add_argument("--day", type=dt.date.fromisoformat, required=True)
        so.add_argument("--through", type=dt.date.fromisoformat, help="last day, included (default: --day)")
        so.set_defaults(func=_cmd_social, dag_id=dag_id)

    ev = sub.add_parser("evaluate", help="offline retrieval evaluation: fit every channel on the window ending on "
                        "--day, score it on the next day's clicks")
    ev.add_argument("--day", type=dt.date.fromisoformat, required=True, help="last training day")
    ev.add_argument("--channels", help="comma-separated channels; 'all' (the default) = every channel; "
                    "ablation: two_tower_no_logq")
    ev.add_argument("--eval-days", type=int, default=1, help="days of clicks after --day to evaluate on")
    ev.add_argument("--train-window-days", type=int, help="training window (default: retrieval.train_window_days)")
    ev.add_argument("--funnel", action="store_true", help="evaluate the whole funnel instead: the feeds for --day + 1 "
                    "(artifacts current now) next to their merged candidates, popularity and each channel")
    ev.add_argument("--strategy", help="--funnel: a serving strategy (default: serving.default_strategy)")
    ev.set_defaults(func=_cmd_evaluate)

    rc = sub.add_parser("recommend", help="one user's feed through the recommendation path, with why each item is there")
    rc.add_argument("--user", type=int, required=True)
    rc.add_argument("--day", type=dt.date.fromisoformat, help="last day of data (default: the latest loaded)")
    rc.add_argument("--strategy", help="a serving strategy of the config (default: serving.default_strategy)")
    rc.add_argument("--explain", action="store_true", help="every head, fusion term and the funnel counts")
    rc.set_defaults(func=_cmd_recommend)

    sv = sub.add_parser("serve", help="the online endpoint: feeds over HTTP (/feed/{user_id}, /healthz, /metrics), "
                        "reloading new artifact versions without a restart")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--day", type=dt.date.fromisoformat, help="serve from the data through this day (default: the "
                    "latest loaded, followed as new days arrive)")
    sv.set_defaults(func=_cmd_serve)

    fe = sub.add_parser("feeds", help="run the feeds DAG: the next day's feeds of every user expected back, "
                        "GX-checked, published")
    fe.add_argument("--day", type=dt.date.fromisoformat, help="last day of data (default: the latest loaded)")
    fe.set_defaults(func=_cmd_feeds)

    tr = sub.add_parser("train", help="run the nightly_training DAG: train through the day before --day, "
                        "evaluate on --day, gate, publish")
    tr.add_argument("--day", type=dt.date.fromisoformat, required=True, help="the evaluation day (data through it)")
    tr.set_defaults(func=_cmd_train)

    fd = sub.add_parser("fault-drill", help="plant each listed bug in a day's full-ranking predictions: is it "
                        "stopped by the distillation gate, and the pre-ranker's AUC gated vs ungated")
    fd.add_argument("--day", type=dt.date.fromisoformat, required=True, help="a scored day with exposures the day after")
    fd.set_defaults(func=_cmd_fault_drill)

    sg = sub.add_parser("special-groups", help="residual model (new / low-activity users) and GBDT calibrator "
                        "(one segment): fit on the days before --day, calibration before/after on --day")
    sg.add_argument("--day", type=dt.date.fromisoformat, required=True, help="the evaluation day")
    sg.set_defaults(func=_cmd_special_groups)

    mo = sub.add_parser("models", help="the model registry: list versions (* = current) or roll back")
    mo.add_argument("action", choices=["list", "rollback"])
    mo.add_argument("--model", help="a model name (list: default all)")
    mo.add_argument("--version", help="rollback: the version to make current")
    mo.set_defaults(func=_cmd_models)

    sub.add_parser("report", help="regenerate the HTML metrics report from the warehouse").set_defaults(
        func=_cmd_report
    )

    a = sub.add_parser("alerts", help="print the latest alerts")
    a.add_argument("--last", type=int, default=20)
    a.add_argument("--html", action="store_true", help="also render the alert landing pages (HTML)")
    a.set_defaults(func=_cmd_alerts)

    ex = sub.add_parser("experiment", help="the closed loop: run an experiment day by day through the DAGs, "
                        "or print its readout")
    ex.add_argument("action", choices=["run", "readout", "validity"])
    ex.add_argument("name", nargs="?", help="an experiment of the config's `experiments:` (run, readout)")
    ex.add_argument("--days", type=int, default=14,
                    help="served days to simulate (run; validity: days after the 14-day CUPED pre-period)")
    ex.add_argument("--seeds", type=int, default=20, help="validity: simulations (seeds simulator.seed, +1, ..)")
    ex.add_argument("--experiments", type=int, default=50, help="validity: A/A experiments per simulation, one layer each")
    ex.add_argument("--users", type=int, default=4000, help="validity: simulated users")
    ex.add_argument("--items", type=int, default=2000, help="validity: simulated items")
    ex.add_argument("--planted", type=float, default=0.3, help="validity: satisfaction shift planted in a treatment arm")
    ex.set_defaults(func=_cmd_experiment)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `recpipe` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.DEBUG if args.verbose else logging.WARNING)  # 8 lines per start
    if args.config:  # DAGs loaded in this process read the same file
        os.environ["RECPIPE_CONFIG"] = str(Path(args.config).resolve())
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"recpipe: {e}", file=sys.stderr)
        return 2
    return args.func(cfg, args)


if __name__ == "__main__":
    sys.exit(main())
