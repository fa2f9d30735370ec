"""Lay out one day's behaviour as event rows, by direct scatter (no sort).

Regular sessions come first, in session order; inside a session the rows are session_start,
the uploads, then per impression: impression, [click, like, favorite, share, comment, follow],
and session_end last. Offsite-visit sessions follow: session_start, offsite_visit, session_end.
Timestamps increase inside a session in row order. An impression's serving strategy and channel
labels (if the policy gave them) also go to its click and post-click action rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.core.contract import EVENT_TYPES

CODE = {name: np.int8(i) for i, name in enumerate(EVENT_TYPES)}
ACTION_CODES = np.array([CODE[a] for a in ("like", "favorite", "share", "comment", "follow")], dtype=np.int8)


@dataclass(frozen=True)
class Labels:
    """A string label per row, dictionary-encoded: codes (int32, -1 = null) into `values`; codes
    None = every row null."""

    codes: np.ndarray | None
    values: tuple[str, ...]


def encode_labels(labels: np.ndarray | None, n: int) -> Labels:
    """Labels of `n` rows from an array of str / None (None: all null)."""
    if labels is None:
        return Labels(None, ())
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} rows")
    encoded = pa.array(labels, type=pa.string()).dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return Labels(codes, tuple(encoded.dictionary.to_pylist()))


@dataclass(frozen=True)
class SessionLayout:
    """Regular sessions (arrays per session, per impression, per click, per upload)."""

    user: np.ndarray  # user index per session
    t0: np.ndarray  # session start, us
    length: np.ndarray  # session length, us
    n_imp: np.ndarray  # impressions per session (>= 1)
    n_publish: np.ndarray  # uploads per session
    imp_item: np.ndarray  # item index per impression (session-major)
    imp_ts: np.ndarray
    imp_strategy: Labels  # per impression
    imp_channel: Labels
    clicked: np.ndarray  # impression positions that were clicked (ascending)
    click_ts: np.ndarray
    dwell_ms: np.ndarray  # per click
    actions: np.ndarray  # (clicks, 5) bool: like, favorite, share, comment, follow
    action_ts: np.ndarray  # (clicks, 5)
    publish_item: np.ndarray  # item index per upload (session-major)
    publish_ts: np.ndarray


@dataclass(frozen=True)
class VisitLayout:
    """Offsite visits: one short session each."""

    user: np.ndarray
    referrer: np.ndarray  # the sharer (user index)
    item: np.ndarray
    t0: np.ndarray
    length: np.ndarray  # us


@dataclass(frozen=True)
class EventColumns:
    """Event rows as numpy columns; indices (not ids); -1 = null; session = day-local number."""

    event_type: np.ndarray  # int8 index into EVENT_TYPES
    ts: np.ndarray  # int64 us
    user: np.ndarray
    session: np.ndarray
    item: np.ndarray
    dwell_ms: np.ndarray
    referrer: np.ndarray
    position: np.ndarray  # int32
    strategy: Labels
    channel: Labels

    def __len__(self) -> int:
        return len(self.ts)


def layout_events(s: SessionLayout, v: VisitLayout) -> EventColumns:
    """All event rows of the day."""
    n_sess, n_vis = len(s.user), len(v.user)
    imp_first = np.cumsum(s.n_imp) - s.n_imp
    imp_sess = np.repeat(np.arange(n_sess), s.n_imp)
    per_imp = np.ones(len(s.imp_item), dtype=np.int64)
    per_imp[s.clicked] += 1 + s.actions.sum(axis=1)
    sess_rows = 2 + s.n_publish + np.add.reduceat(per_imp, imp_first)
    sess_off = np.cumsum(sess_rows) - sess_rows
    n_reg = int(sess_rows.sum())
    n = n_reg + 3 * n_vis

    before = np.cumsum(per_imp) - per_imp
    imp_row = sess_off[imp_sess] + 1 + s.n_publish[imp_sess] + before - np.repeat(before[imp_first], s.n_imp)
    click_row = imp_row[s.clicked] + 1
    a_click, a_kind = np.nonzero(s.actions)
    action_row = click_row[a_click] + 1 + (np.cumsum(s.actions, axis=1) - s.actions)[a_click, a_kind]
    pub_sess = np.repeat(np.arange(n_sess), s.n_publish)
    pub_first = np.cumsum(s.n_publish) - s.n_publish
    pub_row = sess_off[pub_sess] + 1 + np.arange(len(pub_sess)) - pub_first[pub_sess]
    end_row = sess_off + sess_rows - 1
    visit_row = n_reg + 3 * np.arange(n_vis)

    etype = np.empty(n, dtype=np.int8)
    ts = np.empty(n, dtype=np.int64)
    user = np.empty(n, dtype=np.int64)
    session = np.empty(n, dtype=np.int64)
    item = np.full(n, -1, dtype=np.int64)
    dwell = np.full(n, -1, dtype=np.int64)
    referrer = np.full(n, -1, dtype=np.int64)
    position = np.full(n, -1, dtype=np.int32)

    # Per-session columns: user and session id cover every regular row of the session.
    session[:n_reg] = np.repeat(np.arange(n_sess), sess_rows)
    user[:n_reg] = np.repeat(s.user, sess_rows)
    etype[sess_off], ts[sess_off] = CODE["session_start"], s.t0
    etype[end_row], ts[end_row] = CODE["session_end"], s.t0 + s.length
    dwell[end_row] = s.length // 1000
    etype[pub_row], ts[pub_row], item[pub_row] = CODE["publish"], s.publish_ts, s.publish_item
    etype[imp_row], ts[imp_row], item[imp_row] = CODE["impression"], s.imp_ts, s.imp_item
    position[imp_row] = np.arange(len(s.imp_item)) - np.repeat(imp_first, s.n_imp)
    etype[click_row], ts[click_row], item[click_row] = CODE["click"], s.click_ts, s.imp_item[s.clicked]
    dwell[click_row] = s.dwell_ms
    etype[action_row], ts[action_row] = ACTION_CODES[a_kind], s.action_ts[a_click, a_kind]
    item[action_row] = s.imp_item[s.clicked][a_click]
    labels = []
    for imp_labels in (s.imp_strategy, s.imp_channel):
        if imp_labels.codes is None:
            labels.append(imp_labels)
            continue
        codes = np.full(n, -1, dtype=np.int32)
        codes[imp_row] = imp_labels.codes
        codes[click_row] = imp_labels.codes[s.clicked]
        codes[action_row] = imp_labels.codes[s.clicked][a_click]
        labels.append(Labels(codes, imp_labels.values))

    # Offsite visits.
    vis_session = n_sess + np.arange(n_vis)
    visit_rows = ((0, "session_start", v.t0), (1, "offsite_visit", v.t0), (2, "session_end", v.t0 + v.length))
    for offset, code, t in visit_rows:
        rows = visit_row + offset
        etype[rows], ts[rows], user[rows], session[rows] = CODE[code], t, v.user, vis_session
    item[visit_row + 1], referrer[visit_row + 1] = v.item, v.referrer
    dwell[visit_row + 2] = v.length // 1000
    return EventColumns(etype, ts, user, session, item, dwell, referrer, position, *labels)
