"""Roster files (YAML, one pool each) -> Roster objects, with file:line:field errors.

    pool: sales
    timezone: Europe/Berlin          # IANA name; shift times are local wall-clock times
    min: 2
    max: 120
    buffer: {min: 2, percent: 10}    # warm spare desktops while anyone is rostered
    prewarm_minutes: 20              # optional; default: derived from measured provisioning
    ramp_down: {logoff_after_minutes: 10}
    arrival_margin_minutes: 10       # agents log in up to this early or late
    shifts:
      - {name: early, days: [mon, tue, wed, thu, fri], start: "06:00", end: "14:00", headcount: 30}
      - {name: night, days: [mon, tue, wed, thu, fri, sat, sun], start: "22:00", end: "06:00", headcount: 5}
    events:
      - {name: promo, start: "2026-11-27T13:00", end: "2026-11-27T17:00", headcount: 200}
    holidays: ["2026-12-25"]
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from controlplane.domain.naming import NAME_RE
from controlplane.domain.roster import Event, Roster, Shift
from controlplane.domain.safe_yaml import DocumentError, DocumentsInvalid, check_count, line_of, load_one, unique

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
LOCAL_DT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]$"
FIRST_YEAR, LAST_YEAR = 2000, 2199  # far from datetime's limits, where a time-zone shift overflows


def _obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": props, "required": required}


COUNT = {"type": "integer", "minimum": 0, "maximum": 5000}
NAME = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9 _-]{0,39}$"}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ShiftDesk pool roster",
    **_obj({
        "pool": {"type": "string", "pattern": NAME_RE.pattern},
        "timezone": {"type": "string", "maxLength": 64},
        "min": COUNT, "max": COUNT,
        "buffer": _obj({"min": COUNT, "percent": {"type": "number", "minimum": 0, "maximum": 500}}, []),
        "prewarm_minutes": {"type": "integer", "minimum": 0, "maximum": 1440},
        "ramp_down": _obj({"logoff_after_minutes": {"type": "integer", "minimum": 0, "maximum": 1440}}, []),
        "arrival_margin_minutes": {"type": "integer", "minimum": 0, "maximum": 240},
        "shifts": {"type": "array", "maxItems": 200, "items": _obj({
            "name": NAME, "days": {"type": "array", "minItems": 1, "uniqueItems": True,
                                   "items": {"enum": DAYS}},
            "start": {"type": "string", "pattern": HHMM}, "end": {"type": "string", "pattern": HHMM},
            "headcount": COUNT}, ["name", "days", "start", "end", "headcount"])},
        "events": {"type": "array", "maxItems": 500, "items": _obj({
            "name": NAME, "start": {"type": "string", "pattern": LOCAL_DT},
            "end": {"type": "string", "pattern": LOCAL_DT}, "headcount": COUNT},
            ["name", "start", "end", "headcount"])},
        "holidays": {"type": "array", "maxItems": 400, "uniqueItems": True,
                     "items": {"type": "string", "format": "date", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
    }, ["pool", "timezone", "shifts"]),
}


def parse(files: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(file name, validated document) for every file; DocumentsInvalid lists every problem."""
    errors: list[DocumentError] = []
    check_count(files)
    docs: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(files):
        doc = load_one(name, files[name], SCHEMA, errors)
        if doc is None:
            continue
        problems = _semantic_problems(doc)
        for path, message in problems:
            errors.append(DocumentError(name, line_of(files[name], path), ".".join(map(str, path)), message))
        if not problems:
            docs.append((name, doc))
    errors += unique(docs, "pool", "also has a roster in")
    if errors:
        raise DocumentsInvalid(errors)
    return docs


def load(files: dict[str, str]) -> list[Roster]:
    return [to_roster(doc) for _, doc in parse(files)]


def _semantic_problems(doc: dict[str, Any]) -> list[tuple[list[Any], str]]:
    problems: list[tuple[list[Any], str]] = []
    if doc["timezone"] not in available_timezones():
        problems.append((["timezone"], f"{doc['timezone']!r} is not an IANA timezone"))
    if doc.get("min", 0) > doc.get("max", 500):
        problems.append((["min"], "min is above max"))
    problems += _date_problems(doc)
    for i, shift in enumerate(doc["shifts"]):
        if shift["start"] == shift["end"]:
            problems.append((["shifts", i, "end"], "a shift cannot start and end at the same time"))
    return problems


def _date_problems(doc: dict[str, Any]) -> list[tuple[list[Any], str]]:
    """Dates the schema's shape check lets through but the calendar has not (2026-02-30, month 13):
    refused here, since to_roster would otherwise fail on them later, at every scaling evaluation."""
    problems: list[tuple[list[Any], str]] = []
    for i, text in enumerate(doc.get("holidays", [])):
        if (why := _calendar_problem(text, date.fromisoformat)) is not None:
            problems.append((["holidays", i], why))
    for i, event in enumerate(doc.get("events", [])):
        bad = [(["events", i, key], why) for key in ("start", "end")
               if (why := _calendar_problem(event[key], datetime.fromisoformat)) is not None]
        if not bad and event["end"] <= event["start"]:  # the fixed shape sorts as text
            bad.append((["events", i, "end"], "an event must end after it starts"))
        problems += bad
    return problems


def _calendar_problem(text: str, parse: Callable[[str], date]) -> str | None:
    """Why TEXT (already of the right shape) is no day of a roster, or None."""
    try:
        year = parse(text).year
    except ValueError as err:
        return f"{text!r} is not a date in the calendar ({err})"
    if not FIRST_YEAR <= year <= LAST_YEAR:
        return f"{text!r}: a roster plans the years {FIRST_YEAR} to {LAST_YEAR}"
    return None


def to_roster(doc: dict[str, Any]) -> Roster:
    zone = ZoneInfo(doc["timezone"])
    buf = doc.get("buffer", {})
    prewarm = doc.get("prewarm_minutes")
    return Roster(
        pool=doc["pool"], timezone=doc["timezone"],
        shifts=tuple(Shift(name=s["name"], days=frozenset(DAYS.index(d) for d in s["days"]),
                           start=time.fromisoformat(s["start"]), end=time.fromisoformat(s["end"]),
                           headcount=s["headcount"]) for s in doc["shifts"]),
        events=tuple(Event(name=e["name"], start=datetime.fromisoformat(e["start"]).replace(tzinfo=zone),
                           end=datetime.fromisoformat(e["end"]).replace(tzinfo=zone), headcount=e["headcount"])
                     for e in doc.get("events", [])),
        holidays=frozenset(date.fromisoformat(h) for h in doc.get("holidays", [])),
        prewarm=timedelta(minutes=prewarm) if prewarm is not None else None,
        buffer_min=buf.get("min", 0), buffer_pct=float(buf.get("percent", 0)),
        min_size=doc.get("min", 0), max_size=doc.get("max", 500),
        logoff_grace=timedelta(minutes=doc.get("ramp_down", {}).get("logoff_after_minutes", 10)),
        arrival_margin=timedelta(minutes=doc.get("arrival_margin_minutes", 10)),
    )
