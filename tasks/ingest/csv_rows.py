"""Row and line numbers of a CSV file's records, found without parsing the fields.

DuckDB's CSV reader returns the rows it could parse in file order and reports the ones it could
not (rejects table) by record number, counting the header and blank lines as records. To give every
parsed row its data-row number and physical line, the file is split into records here the way
RFC 4180 does (a newline ends a record unless it is inside double quotes), vectorised with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEWLINE, QUOTE, CR = 10, 34, 13


@dataclass(frozen=True)
class CsvRecords:
    """The non-blank data records of a file: their data-row numbers, physical start lines and bytes.

    Row n is the n-th record after the header (blank lines count, as in DuckDB's record numbers,
    but are not rows of the table); `line` is the 1-based line the record starts on; the record is
    `data[start:end]` (without its newline).
    """

    row: np.ndarray
    line: np.ndarray
    start: np.ndarray
    end: np.ndarray


def scan_records(data: bytes) -> CsvRecords:
    """Split a CSV file's bytes into records; record 0 (the header) is left out."""
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == NEWLINE)
    ends = newlines
    if b'"' in data:
        quotes = np.flatnonzero(buf == QUOTE)
        ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    starts = np.concatenate(([0], ends + 1))
    ends = np.concatenate((ends, [len(buf)]))
    if starts[-1] >= len(buf):  # the file ends with a newline: no record after it
        starts, ends = starts[:-1], ends[:-1]
    length = ends - starts
    blank = length == 0
    one = length == 1
    blank[one] = buf[starts[one]] == CR
    index = np.arange(len(starts))
    keep = ~blank & (index > 0)
    return CsvRecords(
        row=index[keep], line=np.searchsorted(newlines, starts[keep]) + 1, start=starts[keep], end=ends[keep]
    )


def is_simple(data: bytes) -> bool:
    """True when records are lines: no quotes and no blank lines (then row n is on line n + 1)."""
    return b'"' not in data and b"\n\n" not in data and b"\n\r\n" not in data


def simple_row_count(data: bytes) -> int:
    """Data rows of a simple file (see is_simple): its lines after the header."""
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    return max(lines - 1, 0)
