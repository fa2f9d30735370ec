"""The online endpoint (`recpipe serve`) as a real HTTP server in its own process, on the served
simulation: feeds equal to the funnel's run independently here, request validation, health and
metrics, concurrent requests, and a model version switched under it picked up without a restart."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tasks.core import artifacts, registry
from tasks.core.config import PlatformConfig, load_config
from tasks.retrieval import ann_refresh, i2i
from tasks.serving.api import pointer_stores
from tasks.serving.context import ServingContext, load_context
from tasks.serving.funnel import recommend

pytestmark = pytest.mark.slow
UNKNOWN_USER = 10_000_000
RELOAD_CHECK_SECONDS = 1
SUMMARY = {"position", "item_id", "channels", "decision", "prerank", "score"}


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=300) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str) -> tuple[int, Any]:
    status, body = get(url)
    return status, json.loads(body)


def wait_for(what: str, ok: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        return get(f"{url}/healthz")[0] == 200
    except OSError:  # not listening yet
        return False


def samples(url: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of every sample /metrics exposes."""
    status, body = get(f"{url}/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def expected_feed(ctx: ServingContext, user: int, strategy: str | None = None) -> pd.DataFrame:
    return recommend(ctx, np.array([user]), strategy).rows.sort_values("position").reset_index(drop=True)


def assert_same_feed(items: list[dict], rows: pd.DataFrame) -> None:
    """Every field of the items equals the rows' column: same items in the same order, with the
    same channels, decisions and scores (None: NaN, an exploration item's)."""
    got = pd.DataFrame(items)
    assert got.item_id.tolist() == rows.item_id.tolist()
    for col in got.columns:
        if rows[col].dtype.kind == "f":
            np.testing.assert_allclose(got[col].astype(float), rows[col], rtol=1e-6, err_msg=col)
        else:
            assert got[col].tolist() == rows[col].tolist(), col


@pytest.fixture(scope="module")
def world(served_world) -> tuple[PlatformConfig, dt.date, ServingContext]:
    cfg, day = served_world
    return cfg, day, load_context(cfg, day)


@pytest.fixture(scope="module")
def url(served_world, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`recpipe serve` on a free port over the served world, checking for new versions every second."""
    cfg, day = served_world
    tmp = tmp_path_factory.mktemp("serve")
    raw = yaml.safe_load(Path(os.environ["RECPIPE_CONFIG"]).read_text())  # the world's config (served_world sets it)
    raw["serving"] = {**raw.get("serving", {}), "reload_check_seconds": RELOAD_CHECK_SECONDS}
    config = tmp / "recpipe.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_config(config).data_root == cfg.data_root
    port, log = free_port(), tmp / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "recpipe"), "--config", str(config), "serve",
                                 "--port", str(port), "--day", str(day)], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("serving context", lambda: healthy(base), 900, proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_known_users_feed_is_the_funnels_feed(world, url: str) -> None:
    cfg, day, ctx = world
    users = np.random.default_rng(1).choice(np.unique(ctx.clicks.user_id), 3, replace=False)
    for user in map(int, users):
        status, body = get_json(f"{url}/feed/{user}")
        assert status == 200, body
        assert (body["user_id"], body["strategy"], body["day"]) == (user, cfg.serving.default_strategy,
                                                                     str(day + dt.timedelta(days=1)))
        assert body["versions"] == ctx.versions and "funnel" not in body
        assert set(body["items"][0]) == SUMMARY
        assert_same_feed(body["items"], expected_feed(ctx, user))


def test_n_limits_the_items_and_explain_adds_every_column_and_the_funnel(world, url: str) -> None:
    cfg, _, ctx = world
    user = int(ctx.clicks.user_id[0])
    expected = expected_feed(ctx, user)
    status, body = get_json(f"{url}/feed/{user}?n=7")
    assert status == 200 and len(body["items"]) == 7
    assert_same_feed(body["items"], expected.head(7))

    status, body = get_json(f"{url}/feed/{user}?n=3&explain=true")
    assert status == 200 and len(body["items"]) == 3
    assert set(body["items"][0]) == set(expected.columns)
    assert any(k.startswith("p_") for k in body["items"][0]) and any(k.startswith("w_") for k in body["items"][0])
    assert_same_feed(body["items"], expected.head(3))
    funnel = recommend(ctx, np.array([user])).funnel.drop(columns="user_id").iloc[0]
    assert body["funnel"] == {k: int(v) for k, v in funnel.items()}

    others = [s for s in cfg.serving.strategies if s != cfg.serving.default_strategy]
    if others:
        status, body = get_json(f"{url}/feed/{user}?strategy={others[0]}")
        assert status == 200 and body["strategy"] == others[0]
        assert_same_feed(body["items"], expected_feed(ctx, user, others[0]))


def test_an_unknown_user_gets_the_full_cold_start_feed(world, url: str) -> None:
    cfg, _, ctx = world
    assert UNKNOWN_USER not in set(ctx.users.user_id) | set(ctx.clicks.user_id)
    status, body = get_json(f"{url}/feed/{UNKNOWN_USER}")
    assert status == 200
    assert len(body["items"]) == cfg.serving.strategy(cfg.serving.default_strategy).feed_length
    assert len({i["item_id"] for i in body["items"]}) == len(body["items"])
    assert_same_feed(body["items"], expected_feed(ctx, UNKNOWN_USER))


@pytest.mark.parametrize("path, field", [
    ("/feed/abc", "user_id"),
    ("/feed/-1", "user_id"),
    (f"/feed/{2**64}", "user_id"),
    ("/feed/1?n=0", "n"),
    ("/feed/1?n=1000000", "n"),
    ("/feed/1?n=two", "n"),
    ("/feed/1?strategy=nope", "strategy"),
    ("/feed/1?explain=maybe", "explain"),
])
def test_a_malformed_request_is_a_4xx_naming_the_field(world, url: str, path: str, field: str) -> None:
    cfg = world[0]
    status, body = get_json(url + path)
    assert 400 <= status < 500, (status, body)
    assert body["detail"].startswith(f"{field}: "), body
    if field == "strategy":
        assert all(name in body["detail"] for name in cfg.serving.strategies)
    if path.endswith("n=1000000"):
        assert str(cfg.serving.strategy(cfg.serving.default_strategy).feed_length) in body["detail"]


def test_healthz_and_metrics(world, url: str) -> None:
    _, day, ctx = world
    status, health = get_json(f"{url}/healthz")
    assert status == 200
    assert health["status"] == "ok" and health["broken"] == {} and health["last_error"] is None
    assert (health["day"], health["data_day"]) == (str(day + dt.timedelta(days=1)), str(day))
    assert health["versions"] == ctx.versions
    assert dt.datetime.fromisoformat(health["loaded_at"]) and dt.datetime.fromisoformat(health["checked_at"])

    stages = recommend(ctx, np.array([UNKNOWN_USER])).seconds
    route = ("route", "/feed/{user_id}")
    before = samples(url)
    for user in (UNKNOWN_USER, int(ctx.clicks.user_id[0]), UNKNOWN_USER + 1):
        assert get(f"{url}/feed/{user}")[0] == 200
    assert get(f"{url}/feed/1?n=0")[0] == 422
    after = samples(url)

    def delta(name: str, *labels: tuple[str, str]) -> float:
        key = (name, tuple(sorted(labels)))
        return after[key] - before.get(key, 0.0)

    assert delta("recpipe_requests_total", route, ("status", "200")) == 3
    assert delta("recpipe_requests_total", route, ("status", "422")) == 1
    assert delta("recpipe_request_seconds_count", route) == 4
    assert delta("recpipe_request_seconds_sum", route) > 0
    for stage in stages:
        assert delta("recpipe_feed_stage_seconds_count", ("stage", stage)) == 3, stage
    assert after[("recpipe_context_loads_total", (("outcome", "loaded"),))] == 1


def test_the_reload_watches_every_model_the_context_serves(world) -> None:
    cfg, _, ctx = world
    served = {  # "ann:<model>:<pool>" names a pinned ANN index
        ann_refresh.index_store(cfg, *key.split(":")[1:]) if key.startswith("ann:") else registry.model_store(cfg, key)
        for key in ctx.versions
    }
    assert served <= set(pointer_stores(cfg))


def test_concurrent_requests_all_get_their_own_feed(world, url: str) -> None:
    _, _, ctx = world
    users = [*map(int, np.unique(ctx.clicks.user_id)[:8]), UNKNOWN_USER, UNKNOWN_USER + 7]
    expected = {u: expected_feed(ctx, u) for u in users}
    requests = users * 4  # 40 requests from 8 threads
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda u: get_json(f"{url}/feed/{u}"), requests))
    for user, (status, body) in zip(requests, answers):
        assert status == 200, body
        assert body["user_id"] == user
        assert_same_feed(body["items"], expected[user])


def test_a_vanished_index_does_not_break_the_served_context(world, url: str, tmp_path: Path) -> None:
    """The context pins the ANN indexes it loaded: the current index's files vanishing under the
    server (its pointer stays, so no reload) changes nothing for the requests."""
    cfg, _, ctx = world
    user = int(ctx.clicks.user_id[0])
    index = artifacts.require_current(ann_refresh.index_store(cfg, "two_tower", "pool_30d"))
    moved = tmp_path / index.name
    shutil.move(index.path, moved)
    try:
        status, body = get_json(f"{url}/feed/{user}")
        assert status == 200, body
        assert_same_feed(body["items"], expected_feed(ctx, user))
        assert get(f"{url}/healthz")[0] == 200
    finally:
        shutil.move(moved, index.path)


def test_a_version_switched_under_the_server_is_served_without_a_restart(world, url: str) -> None:
    cfg, day, ctx = world
    store = registry.model_store(cfg, "itemcf")
    before = artifacts.require_current(store)
    _, health = get_json(f"{url}/healthz")
    assert health["versions"]["itemcf"] == before.name
    loads = samples(url)[("recpipe_context_loads_total", (("outcome", "loaded"),))]

    def served(version: str) -> Callable[[], bool]:
        return lambda: get_json(f"{url}/healthz")[1]["versions"].get("itemcf") == version

    statuses: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            statuses.append(get(f"{url}/feed/{int(ctx.clicks.user_id[0])}?n=5")[0])

    asker = threading.Thread(target=keep_asking)
    asker.start()
    new = None
    try:
        new = i2i.train(cfg, "itemcf", day, make_current=True)  # a nightly publish
        wait_for(f"itemcf {new.name} served", served(new.name), 600)
        artifacts.switch(store, before.name)  # a rollback
        wait_for(f"itemcf {before.name} served again", served(before.name), 600)
    finally:
        stop.set()
        asker.join()
        artifacts.switch(store, before.name)  # the shared world as it was
        if new is not None:
            shutil.rmtree(new.path)
    assert len(statuses) > 1 and set(statuses) == {200}, statuses
    _, health = get_json(f"{url}/healthz")
    assert health["versions"] == ctx.versions and health["last_error"] is None
    assert samples(url)[("recpipe_context_loads_total", (("outcome", "loaded"),))] == loads + 2
