"""The report's social section over hand-written tables: a KOL run that found no rows says so
(not "not built yet"), and a table never built still says "not built yet"."""

from __future__ import annotations

from tasks.core.config import PlatformConfig
from tasks.core.warehouse import connect_writer
from tasks.reports.fragments import CHART
from tasks.reports.social import social_section


def test_a_kol_run_that_found_no_rows_says_so(platform: PlatformConfig) -> None:
    with connect_writer(platform) as con:  # what kol.publish_scores leaves after a day with no score
        con.execute("create table kol_scores (day date, user_id bigint, shares bigint, visits bigint, "
                    "visits_per_share double, kol_score double, percentile double, is_kol boolean)")
    page = social_section(platform)
    assert "No KOL scores: the last run found no rows." in page
    assert "KOL scores: not built yet" not in page and "Implicit follows: not built yet" in page
    assert CHART not in page
