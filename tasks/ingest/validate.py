"""Validation of one batch in DuckDB SQL: every row gets the first rule it fails, in priority order.

Per table `t` the in-memory connection holds `data_t` and `unreadable_t` (the rows read and the
rows that could not be read, see tasks.ingest.staging) and `fail_t` (`_row`, `_rule` = index into
the table's rule list, `_first` = the first row of a duplicated key). Single-row rules run as one
CASE over `data_t`; the category, duplicate and reference checks are joins against this batch's
earlier tables and the lake (day and month files, minus this batch's own rows, so a reload sees the
same lake as the first load).
Every row of `unreadable_t` is quarantined as unparseable_row.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.contract import TABLES
from tasks.core.lake import rows_sql
from tasks.core.storage import Location, register_filesystems
from tasks.ingest.batch import SourceFile
from tasks.ingest.rules import ITEM_REFS, USER_REFS, Rule, date_lit, ident, key_repr, lit, row_rules
from tasks.ingest.staging import stage


@dataclass
class TableCheck:
    """The outcome of validating one file: input rows, valid rows and quarantined rows by reason."""

    table: str
    source: str
    input_rows: int
    valid_rows: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    cast_columns: list[str] = field(default_factory=list)


def connect_memory(temp_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for one batch: all cores, UTC, insertion order kept (row order = file
    order), spilling to `temp_dir` if memory runs short."""
    con = duckdb.connect(
        config={
            "threads": os.cpu_count() or 1,
            "preserve_insertion_order": True,
            "temp_directory": str(temp_dir),
        }
    )
    con.execute("SET TimeZone = 'UTC'")
    return con


def _strictly_increasing(column: pa.ChunkedArray) -> bool:
    values = pc.drop_null(column).combine_chunks().to_numpy(zero_copy_only=False)
    return bool(np.all(values[1:] > values[:-1]))


class Validator:
    """Validates the files of one batch, in load order, on one in-memory connection."""

    def __init__(self, batch_id: str, day: dt.date | None, now: dt.datetime, lake: Location) -> None:
        self._spill = tempfile.TemporaryDirectory(prefix="recpipe-duckdb-")
        self.con = connect_memory(Path(self._spill.name))
        register_filesystems(self.con, [lake])
        self.batch_id = batch_id
        self.day = day
        self.now = now
        self.lake = lake
        self.checks: dict[str, TableCheck] = {}
        self.data: dict[str, pa.Table] = {}
        self._temp_tables: set[str] = set()
        self._dense: dict[str, tuple[int, int] | None] = {}

    def close(self) -> None:
        self.con.close()
        self._spill.cleanup()

    def check_rows(self, src: SourceFile, source_label: str) -> None:
        """Stage one file and apply the single-row rules (reads only the file, never the lake)."""
        table = src.table
        staged = stage(self.con, src)
        self.data[table] = staged.data
        self.con.register(f"data_{table}", staged.data)
        self.con.register(f"unreadable_{table}", staged.unreadable)
        rules = row_rules(table, staged.cast_columns, self.now, self.day)
        unreadable = staged.unreadable.num_rows
        self.checks[table] = TableCheck(
            table,
            source_label,
            staged.input_rows,
            quarantined={"unparseable_row": unreadable} if unreadable else {},
            rules=rules,
            cast_columns=staged.cast_columns,
        )
        case = " ".join(f"WHEN {r.when} THEN {i}" for i, r in enumerate(rules))
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE bad_{table} AS SELECT * FROM (SELECT _row, "
            f"CAST(CASE {case} END AS SMALLINT) AS _rule, CAST(NULL AS BIGINT) AS _first FROM data_{table}) "
            "WHERE _rule IS NOT NULL"
        )

    def check_keys(self, table: str) -> TableCheck:
        """Apply duplicate and reference rules (after check_rows of this and every earlier table)."""
        check = self.checks[table]
        union = " UNION ALL ".join([f"SELECT * FROM bad_{table}", *self._late_queries(check)])
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE fail_{table} AS "
            "SELECT _row, min(_rule) AS _rule, max(_first) AS _first "
            f"FROM ({union}) GROUP BY _row"
        )
        self._count(check)
        return check

    # Checks against other rows: duplicates, references --------------------------------------
    def _lake_rows(self, table: str, columns: list[str], days: list[dt.date] | None) -> tuple[str, dict] | None:
        """SQL and parameters over the lake's `columns` of `table` (only `days` if given), without
        this batch's rows; None when the lake has none."""
        return rows_sql(self.lake, table, columns, days, exclude_batch=self.batch_id)

    def _lake_ids(self, table: str, column: str) -> str:
        """Temp table of `column` over every lake partition of `table` (without this batch's rows)."""
        name = f"lake_{table}_{column}"
        if name not in self._temp_tables:
            if lake := self._lake_rows(table, [column], None):
                self.con.execute(f"CREATE TEMP TABLE {name} AS {lake[0]}", lake[1])
            else:
                self.con.execute(f"CREATE TEMP TABLE {name} ({ident(column)} BIGINT)")
            self._temp_tables.add(name)
        return name

    def _unknown(self, table: str, column: str, ref: str) -> str:
        """SQL condition: the non-null id `ref` is not an id of `table` known to this batch (in the
        lake, or valid in this batch). Known ids forming one dense range become a range check."""
        name = f"known_{table}"
        if name not in self._temp_tables:
            col = ident(column)
            sql = f"CREATE TEMP TABLE {name} AS SELECT {col} AS id FROM {self._lake_ids(table, column)}"
            if table in self.checks:
                valid = f"_row NOT IN (SELECT _row FROM fail_{table})"
                sql += f" UNION ALL SELECT {col} FROM data_{table} WHERE {valid}"
            self.con.execute(sql)
            lo, hi, n = self.con.execute(
                f"SELECT min(id), max(id), count(DISTINCT id) FROM {name}"
            ).fetchall()[0]
            self._dense[name] = (lo, hi) if n and hi - lo + 1 == n else None
            self._temp_tables.add(name)
        dense = self._dense[name]
        if dense:
            return f"{ref} IS NOT NULL AND {ref} NOT BETWEEN {int(dense[0])} AND {int(dense[1])}"
        return f"{ref} IS NOT NULL AND {ref} NOT IN (SELECT id FROM {name})"

    def _touched_days(self, table: str) -> list[dt.date]:
        if self.day:
            return [self.day]
        ts = ident(TABLES[table].ts_column)
        sql = f"SELECT DISTINCT CAST({ts} AS DATE) FROM data_{table} WHERE {ts} IS NOT NULL"
        return [d for (d,) in self.con.execute(sql).fetchall()]

    def _dup_in_batch(self, table: str, idx: int) -> str | None:
        """Rows repeating a key of an earlier row (among rows that pass the single-row rules)."""
        key = TABLES[table].key
        if len(key) == 1 and _strictly_increasing(self.data[table][key[0]]):
            return None  # ids in increasing order: no repeats (the usual case, checked in O(n))
        keys = ", ".join(ident(k) for k in key)
        match = " AND ".join(f"d.{ident(k)} = c.{ident(k)}" for k in key)
        return (
            f"SELECT c._row, {idx}, d._first FROM data_{table} c JOIN ("
            f"SELECT {keys}, min(_row) AS _first FROM data_{table} "
            f"WHERE _row NOT IN (SELECT _row FROM bad_{table}) "
            f"GROUP BY {keys} HAVING count(*) > 1) d ON {match} WHERE c._row > d._first"
        )

    def _dup_in_lake(self, table: str, idx: int) -> str | None:
        """Rows whose key is already in the lake partitions the batch touches (users/items: all)."""
        key = TABLES[table].key
        if table in ("users", "items"):
            source = self._lake_ids(table, key[0])
        else:
            lake = self._lake_rows(table, list(key), self._touched_days(table))
            if lake is None:
                return None
            source = f"lake_keys_{table}"
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {source} AS {lake[0]}", lake[1])
        match = " AND ".join(f"l.{ident(k)} = c.{ident(k)}" for k in key)
        exists = f"EXISTS (SELECT 1 FROM {source} l WHERE {match})"
        return f"SELECT c._row, {idx}, NULL FROM data_{table} c WHERE {exists}"

    def _category_conflicts(self, idx: int) -> str:
        """Items whose category_l2 is already under another category_l1: in the lake (its smallest
        l1 if it has several), else in the first item of this batch with that l2 among the rows
        that pass the single-row rules. Leaves temp table l2_owner (l2 -> its l1) for the message."""
        lake = self._lake_rows("items", ["category_l1", "category_l2"], None)
        owners = (
            f"SELECT category_l2, min(category_l1) AS category_l1 FROM ({lake[0]}) GROUP BY category_l2"
            if lake
            else "SELECT CAST(NULL AS VARCHAR) AS category_l2, CAST(NULL AS VARCHAR) AS category_l1 WHERE false"
        )
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE l2_owner AS WITH lake AS ({owners}), batch AS ("
            "SELECT category_l2, arg_min(category_l1, _row) AS category_l1 FROM data_items "
            "WHERE _row NOT IN (SELECT _row FROM bad_items) GROUP BY category_l2) "
            "SELECT category_l2, coalesce(l.category_l1, b.category_l1) AS category_l1 "
            "FROM batch AS b LEFT JOIN lake AS l USING (category_l2)",
            lake[1] if lake else None,
        )
        return (
            f"SELECT c._row, {idx}, NULL FROM data_items c JOIN l2_owner o USING (category_l2) "
            "WHERE c.category_l1 <> o.category_l1"
        )

    def _late_queries(self, check: TableCheck) -> list[str]:
        """Add the category (items), duplicate and reference rules to `check.rules`; return their
        failing-row queries."""
        table = check.table
        key_field = ",".join(TABLES[table].key)
        late: list[tuple[Rule, str | None]] = []
        idx = len(check.rules)
        if table == "items":
            owner = "(SELECT o.category_l1 FROM l2_owner o WHERE o.category_l2 = data_items.category_l2)"
            rule = Rule(
                "invalid_value",
                "category_l2",
                "",
                f"format('{{}} is already under category_l1 {{}} (an l2 belongs to one l1)', "
                f"to_json(data_items.category_l2), to_json({owner}))",
            )
            late.append((rule, self._category_conflicts(idx)))
        late.append(
            (
                Rule(
                    "duplicate_key",
                    key_field,
                    "",
                    "format('duplicate key ({}): first seen at row {} of this batch', "
                    f"{key_repr(table)}, _first)",
                ),
                self._dup_in_batch(table, idx + len(late)),
            )
        )
        late.append(
            (
                Rule(
                    "duplicate_key",
                    key_field,
                    "",
                    "format('duplicate key ({}): already in the lake from another batch', "
                    f"{key_repr(table)})",
                ),
                self._dup_in_lake(table, idx + len(late)),
            )
        )
        refs = [("users", "user_id", "unknown_user", c) for c in USER_REFS[table]]
        refs += [("items", "item_id", "unknown_item", c) for c in ITEM_REFS[table]]
        for ref_table, ref_column, reason, column in refs:
            c = ident(column)
            rule = Rule(reason, column, "", f"format('{reason.replace('_', ' ')} {{}}', {c})")
            unknown = self._unknown(ref_table, ref_column, c)
            late.append((rule, f"SELECT _row, {idx + len(late)}, NULL FROM data_{table} WHERE {unknown}"))
        check.rules.extend(rule for rule, _ in late)
        return [sql for _, sql in late if sql]

    def _count(self, check: TableCheck) -> None:
        by_rule = self.con.execute(
            f"SELECT _rule, count(*) FROM fail_{check.table} GROUP BY _rule"
        ).fetchall()
        for idx, n in sorted(by_rule):
            reason = check.rules[idx].reason
            check.quarantined[reason] = check.quarantined.get(reason, 0) + n
        check.valid_rows = self.data[check.table].num_rows - sum(n for _, n in by_rule)

    # Outputs ---------------------------------------------------------------------------------
    def valid_partitions(self, table: str) -> list[tuple[dt.date, pa.Table]]:
        """The valid rows of `table` per lake partition (contract columns), each in file order."""
        data = self.data[table]
        failed = self.con.execute(f"SELECT _row FROM fail_{table}").fetchnumpy()["_row"]
        if len(failed):
            data = data.filter(pc.invert(pc.is_in(data["_row"], pa.array(failed))))
        data = data.select(TABLES[table].column_names)
        if self.day:
            return [(self.day, data)] if data.num_rows else []
        days = data[TABLES[table].ts_column].cast(pa.date32())
        order = pc.sort_indices(days)  # stable: file order within a day
        data, days = data.take(order), days.take(order)
        out, start = [], 0
        for run in pc.value_counts(days).to_pylist():
            out.append((run["values"], data.slice(start, run["counts"])))
            start += run["counts"]
        return out

    def quarantine_rows(self, table: str) -> pa.Table:
        """The quarantined rows of `table`: the quarantine schema plus `_dt` (NULL: a dump row
        without a day of its own)."""
        check = self.checks[table]
        t = TABLES[table]

        def by_rule(values: list[str]) -> str:
            return "CASE f._rule " + " ".join(f"WHEN {i} THEN {v}" for i, v in enumerate(values)) + " END"

        field_sql = by_rule([lit(r.field) for r in check.rules])
        detail = by_rule([r.detail for r in check.rules])
        raw = ", ".join(
            f"{ident(c)} := {ident('_raw_' + c) if c in check.cast_columns else ident(c)}"
            for c in t.column_names
        )
        day = date_lit(self.day) if self.day else f"CAST({ident(t.ts_column)} AS DATE)"
        unreadable_day = date_lit(self.day) if self.day else "CAST(NULL AS DATE)"
        unreadable_message = (
            "format('{} row {}{}{}: unparseable row: {}', $source, _row, COALESCE(' (line ' || _line || ')', ''), "
            "COALESCE(', field ' || field, ''), detail)"
        )
        sql = (
            f"SELECT $batch_id AS batch_id, {lit(table)} AS table_name, $source AS source_file, "
            f"f._row AS row_number, _line AS line_number, {field_sql} AS field, "
            f"{by_rule([lit(r.reason) for r in check.rules])} AS reason, "
            f"format('{{}} row {{}}, field {{}}: {{}}', $source, f._row, {field_sql}, {detail}) AS message, "
            f"CAST(to_json(struct_pack({raw})) AS VARCHAR) AS raw_record, {day} AS _dt "
            f"FROM fail_{table} f JOIN data_{table} USING (_row) UNION ALL "
            f"SELECT $batch_id, {lit(table)}, $source, _row, _line, field, 'unparseable_row', "
            f"{unreadable_message}, raw_record, {unreadable_day} FROM unreadable_{table}"
        )
        params = {"batch_id": self.batch_id, "source": check.source}
        return self.con.sql(f"SELECT * FROM ({sql}) ORDER BY row_number", params=params).to_arrow_table()
