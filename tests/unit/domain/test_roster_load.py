"""Roster files: a date the calendar does not have is a field error with its line, not a crash later."""

from __future__ import annotations

import pytest

from controlplane.domain.roster_load import load
from controlplane.domain.safe_yaml import DocumentsInvalid

SMALL = """pool: sales
timezone: UTC
shifts:
  - {name: day, days: [tue], start: "08:05", end: "08:30", headcount: 3}
"""


def event(start: str, end: str) -> str:
    return f'events:\n  - {{name: e, start: "{start}", end: "{end}", headcount: 1}}\n'


@pytest.mark.parametrize("extra,where", [
    ('holidays: ["2026-02-30"]\n', (5, "holidays.0")),
    ('holidays: ["2026-01-01", "2026-13-01"]\n', (5, "holidays.1")),
    ("holidays: [2026-02-29]\n", (5, "holidays.0")),  # unquoted, so a YAML timestamp; 2026 is no leap year
    ('holidays: ["0000-01-01"]\n', (5, "holidays.0")),
    (event("2026-02-30T10:00", "2026-03-01T10:00"), (6, "events.0.start")),
    (event("2026-12-01T10:00", "2026-13-01T10:00"), (6, "events.0.end")),
    (event("0000-01-01T10:00", "2026-01-01T10:00"), (6, "events.0.start")),
    (event("2026-12-31T10:00", "9999-12-31T23:59"), (6, "events.0.end")),  # at datetime's limit
    (event("2026-03-01T10:00", "2026-02-30T10:00"), (6, "events.0.end")),
    (event("2026-03-01T10:00", "2026-03-01T09:00"), (6, "events.0.end")),
])
def test_impossible_dates_name_file_line_and_field(extra, where):
    with pytest.raises(DocumentsInvalid) as e:
        load({"r.yaml": SMALL + extra})
    assert [(x.file, x.line, x.field) for x in e.value.errors] == [("r.yaml", *where)], str(e.value)


def test_real_dates_load():
    (roster,) = load({"r.yaml": SMALL + 'holidays: ["2028-02-29"]\n' + event("2026-03-01T10:00", "2026-03-02T10:00")})
    assert roster.holidays and roster.events
