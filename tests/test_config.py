"""The platform config: the shipped file is valid; errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.cli import main
from tasks.core.config import DEFAULT_CONFIG, ConfigError, RankingConfig, load_config


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _shipped() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_shipped_config_is_valid() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert {s.name for s in cfg.segments} >= {"new_users", "low_activity"}
    assert cfg.warehouse_path.is_absolute() and cfg.warehouse_path.name == "warehouse.duckdb"
    assert cfg.simulator.experiment_buckets[0] == "control"


def test_a_config_extends_another_and_changes_only_what_differs(tmp_path: Path) -> None:
    study = load_config(DEFAULT_CONFIG.parent / "playbook-study.yaml")
    shipped = load_config(DEFAULT_CONFIG)
    assert study.simulator.exposure_policy == "recpipe" and study.data_root.name == "data-study"
    assert study.simulator.model_copy(update={"exposure_policy": "default"}) == shipped.simulator
    assert study.pools == shipped.pools and study.experiments == shipped.experiments
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends` cycle"):
        load_config(tmp_path / "a.yaml")


def test_a_scaled_strategy_keeps_its_funnel_shape() -> None:
    """StrategyConfig.scaled (the benchmarks' smaller funnels): every quota times the factor,
    rounded, each segment's quotas still summing to total_quota, the pre-ranking counts scaled."""
    s = load_config(DEFAULT_CONFIG).serving.strategy("baseline")
    for factor in (0.25, 0.5, 2.0):
        scaled = s.scaled(factor)
        assert {n: c.quota for n, c in scaled.channels.items()} == {n: round(c.quota * factor)
                                                                   for n, c in s.channels.items()}
        assert scaled.total_quota == sum(c.quota for c in scaled.channels.values())
        for segment in s.segment_quotas:  # the model's own check, and each quota within one of its scaled value
            assert sum(scaled.quota(n, (segment,)) for n in scaled.channels) == scaled.total_quota
            assert all(abs(scaled.quota(n, (segment,)) - s.quota(n, (segment,)) * factor) <= len(s.channels)
                       for n in s.channels)
        assert (scaled.preranking.interest, scaled.preranking.diverse) == (
            round(s.preranking.interest * factor), round(s.preranking.diverse * factor))
        assert scaled.feed_length == s.feed_length and scaled.fusion == s.fusion
    assert s.scaled(1.0) == s


def test_data_dir_env_moves_every_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECPIPE_DATA_DIR", str(tmp_path))
    cfg = load_config(DEFAULT_CONFIG)
    for p in (cfg.lake_dir, cfg.landing_dir, cfg.warehouse_path, cfg.alerts_log, cfg.ground_truth_dir):
        assert p.is_relative_to(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "key", "message"),
    [
        (lambda r: r["simulator"].update(userz=10), "simulator.userz", "Extra inputs are not permitted"),
        (lambda r: r["simulator"].update(users="many"), "simulator.users", "valid integer"),
        (lambda r: r["ingest"].update(quarantine_alert_share=1.5), "ingest.quarantine_alert_share", "less than or equal"),
        (lambda r: r["segments"].append({"name": "x", "kind": "martians"}), "segments.4", "kind"),
        (lambda r: r["segments"].append({"name": "y", "kind": "demographic", "gender": ["q"]}), "segments.4.demographic", "unknown demographic values"),
        (lambda r: r["segments"].append({"name": "new_users", "kind": "new_users"}), "segments", "duplicate segment names"),
        (lambda r: r["airflow"].update(warehouse_pool="Bad Pool"), "airflow.warehouse_pool", "pattern"),
        (lambda r: r["alerts"]["routes"][0].update(webhook_url_env="https://hooks.example/x"), "alerts.routes.0.webhook_url_env", "pattern"),
        (lambda r: r["pools"][3].update(segments=["martians"]), "pools.3.segments.0", "unknown segment 'martians'"),
        (lambda r: r["pools"][0].update(window="30 days"), "pools.0.window", "pattern"),
        (lambda r: r["pools"][0].update(name="pool; drop table x"), "pools.0.name", "pattern"),
        (lambda r: r["pools"][0]["score"].update(action="click", per="click"), "pools.0.score", "is not a rate"),
        (lambda r: r["pools"][0]["score"].update(action="purchase"), "pools.0.score.action", "Input should be"),
        (lambda r: r["pools"][1].update(min_size=500), "pools.1", "min_size 500 is above max_size"),
        (lambda r: r["pools"][0].update(max_size=-1), "pools.0.max_size", "greater than or equal"),
        (lambda r: r["pools"].append(dict(r["pools"][0])), "pools", "duplicate pool names"),
        (lambda r: r["kol"].update(kol_percentile=1.5), "kol.kol_percentile", "less than"),
        (lambda r: r["implicit_follows"].update(top_n=0), "implicit_follows.top_n", "greater than or equal"),
        (lambda r: r["ranking"]["full"].update(history_days=-1), "ranking.full.history_days", "greater than or equal"),
        (lambda r: r["ranking"]["preranking"].update(pairs_per_group=0), "ranking.preranking.pairs_per_group",
         "greater than or equal"),
        (lambda r: r["ranking"]["architecture_comparison"].update(days=0), "ranking.architecture_comparison.days",
         "greater than or equal"),
        (lambda r: r["ranking"]["architecture_comparison"].update(min_positives="many"),
         "ranking.architecture_comparison.min_positives", "valid integer"),
        (lambda r: r["ranking"]["architecture_comparison"].update(keep_version=3),
         "ranking.architecture_comparison.keep_version", "Extra inputs are not permitted"),
    ],
)
def test_invalid_config_names_file_and_key(tmp_path: Path, mutate, key: str, message: str) -> None:
    raw = _shipped()
    mutate(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert key in text
    assert message in text


def test_settings_moved_out_of_code_keep_their_old_values() -> None:
    """Former module constants: HISTORY_DAYS (tasks/ranking/full.py), PAIRS_PER_GROUP
    (tasks/ranking/pre.py), DAYS, MIN_POSITIVES, KEEP_VERSIONS (tasks/ranking/aged_protocols.py);
    the shipped file says the same."""
    for ranking in (RankingConfig(), load_config(DEFAULT_CONFIG).ranking):
        assert ranking.full.history_days == 30
        assert ranking.preranking.pairs_per_group == 16
        assert ranking.architecture_comparison.model_dump() == {"days": 3, "min_positives": 30, "keep_versions": 3}


def test_unparseable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("simulator: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _shipped()
    raw["schedules"]["ingestt"] = "@daily"
    path = _write(tmp_path, raw)
    monkeypatch.setenv("RECPIPE_CONFIG", str(path))  # the CLI exports it; restored after the test
    assert main(["--config", str(path), "config"]) == 2
    assert "schedules.ingestt" in capsys.readouterr().err
