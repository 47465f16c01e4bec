"""Rosters: who is rostered when, and the desired size of a pool at any moment.

A roster belongs to one pool and lives in one IANA timezone. Weekly shifts (days, start, end,
head-count; an end at or before the start crosses midnight) and one-off events (a date range and a
head-count, such as a sales peak) add up where they overlap; holidays cancel the weekly shifts of
that local date (events still count). Wall-clock times are interpreted in the roster's zone, so
a 08:00 shift starts at 08:00 local on both sides of a DST change.

desired_size(roster, t, live, rate) is the whole scaling rule, a pure function:
    need(u)     = headcount(u) + buffer(headcount(u))      buffer = max(min, ceil(pct * headcount)),
                                                            0 when nobody is rostered
    lead        = roster.prewarm, or boot time + need(concurrent peak) / provisioning rate
                  (+ a safety minute)
                  + the arrival margin (agents log in up to that early)
    planned(t)  = max need(u) for u in [t, t + lead]        (warm before people arrive)
    arriving(t) = agents of shifts starting soon not logged in yet (arrivals spread over start +- margin)
    reactive(t) = live + arriving + buffer(live + arriving)   (hand-overs; more agents than rostered)
    desired(t)  = clamp(max(planned, reactive), min, max), and never below live sessions
Because it only depends on (roster, t, live, rate), a missed, late or doubled scheduler wake-up
cannot leave a pool wrong: the next evaluation gives the right answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Shift:
    name: str
    days: frozenset[int]  # 0 = Monday ... 6 = Sunday (the day the shift starts)
    start: time
    end: time  # at or before start: the shift ends the next day
    headcount: int


@dataclass(frozen=True)
class Event:
    name: str
    start: datetime  # aware
    end: datetime
    headcount: int


@dataclass(frozen=True)
class Roster:
    pool: str
    timezone: str
    shifts: tuple[Shift, ...] = ()
    events: tuple[Event, ...] = ()
    holidays: frozenset[date] = frozenset()
    prewarm: timedelta | None = None  # None: derived from measured provisioning
    buffer_min: int = 0
    buffer_pct: float = 0.0
    min_size: int = 0
    max_size: int = 500
    logoff_grace: timedelta = field(default=timedelta(minutes=10))  # ramp-down: sessions after shift end
    arrival_margin: timedelta = field(default=timedelta(minutes=10))  # agents come this early (or late)

    def __post_init__(self) -> None:
        """A Roster that exists can be evaluated at any moment: what would fail there (an unknown
        zone, a percentage that is no number) fails here, where the caller knows which pool it is."""
        if not 0 <= self.buffer_pct < math.inf:
            raise ValueError(f"buffer percent {self.buffer_pct!r} is not a finite number >= 0")
        ZoneInfo(self.timezone)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class ProvisioningRate:
    """What bench/provision.py measures: a desktop's boot time and how many come up per second."""

    boot_s: float = 10.0
    per_second: float = 0.5


def _occurrences(roster: Roster, shift: Shift, first: date, last: date) -> list[tuple[datetime, datetime]]:
    zone = roster.zone
    out = []
    day = first
    while day <= last:
        if day.weekday() in shift.days and day not in roster.holidays:
            start = datetime.combine(day, shift.start, tzinfo=zone)
            end_day = day if shift.end > shift.start else day + timedelta(days=1)
            end = datetime.combine(end_day, shift.end, tzinfo=zone)
            out.append((_norm(start), _norm(end)))
        day += timedelta(days=1)
    return out


def _norm(local: datetime) -> datetime:
    """UTC instant of a local wall time (one DST skipped, such as 02:30 on spring-forward, maps to
    the instant an hour later on the same clock, as zoneinfo's fold=0 reading says)."""
    return local.astimezone(UTC)


def intervals(roster: Roster, start: datetime, end: datetime) -> list[tuple[datetime, datetime, int]]:
    """(from, to, headcount) of every shift occurrence and event touching [start, end)."""
    zone = roster.zone
    first = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    found = []
    for shift in roster.shifts:
        for a, b in _occurrences(roster, shift, first, last):
            if a < end and b > start:
                found.append((a, b, shift.headcount))
    for event in roster.events:
        if event.start < end and event.end > start:
            found.append((event.start, event.end, event.headcount))
    return found


def headcount(roster: Roster, t: datetime) -> int:
    return sum(n for a, b, n in intervals(roster, t, t + timedelta(microseconds=1)) if a <= t < b)


def buffer(roster: Roster, people: int) -> int:
    if people <= 0:
        return 0
    return max(roster.buffer_min, math.ceil(roster.buffer_pct * people / 100.0))


def need(roster: Roster, t: datetime) -> int:
    people = headcount(roster, t)
    return people + buffer(roster, people)


def peak_headcount(roster: Roster, start: datetime, end: datetime) -> int:
    """The most people rostered at one instant of [start, end): overlapping shifts and events add
    up. A sweep over interval edges, where an interval ending at an instant no longer counts there."""
    edges = sorted((x, delta) for a, b, n in intervals(roster, start, end)
                   for x, delta in ((max(a, start), n), (min(b, end), -n)))
    peak = current = 0
    for _, delta in edges:  # at one instant the ends (negative) sort before the starts
        current += delta
        peak = max(peak, current)
    return peak


def lead_time(roster: Roster, rate: ProvisioningRate, t: datetime) -> timedelta:
    """How long before a shift the pool must start growing: the roster's own setting, or long
    enough to boot the week's peak at the measured rate (plus a safety minute). The peak is the
    most people rostered at one moment, since a promotion stacked on a shift must be booted in full."""
    if roster.prewarm is not None:
        return roster.prewarm
    peak = peak_headcount(roster, t, t + timedelta(days=8))
    seconds = rate.boot_s + (peak + buffer(roster, peak)) / max(rate.per_second, 1e-3) + 60.0
    return timedelta(seconds=seconds) + roster.arrival_margin


def planned(roster: Roster, t: datetime, lead: timedelta) -> int:
    """The largest need from now up to and including LEAD from now (it changes only at edges)."""
    horizon = t + lead
    edges = {t} | {x for a, b, _ in intervals(roster, t, horizon + timedelta(microseconds=1))
                   for x in (a, b) if t <= x <= horizon}
    return max(need(roster, u) for u in edges)


def desired_size(roster: Roster, t: datetime, live: int, rate: ProvisioningRate,
                 lead: timedelta | None = None) -> int:
    lead = lead_time(roster, rate, t) if lead is None else lead
    want = planned(roster, t, lead)
    arriving = expected_arrivals(roster, t, lead)
    if live or arriving:
        # at a hand-over the leaving shift is still logged in while the next one arrives; and more
        # agents than rostered may turn up: live sessions plus everyone still expected, plus buffer
        want = max(want, live + arriving + buffer(roster, live + arriving))
    size = min(roster.max_size, max(roster.min_size, want))
    return max(size, min(live, roster.max_size))


def expected_arrivals(roster: Roster, t: datetime, lead: timedelta) -> int:
    """Agents of shifts starting soon who have not logged in yet. Arrivals are spread evenly over
    [start - margin, start + margin]: before that window everyone is still to come, inside it the
    part of the window still ahead, after it nobody."""
    margin = roster.arrival_margin
    pending = 0.0
    for a, _, n in intervals(roster, t - margin, t + lead + margin):
        if not t - margin < a <= t + lead:
            continue
        opens, closes = a - margin, a + margin
        if t <= opens or margin.total_seconds() == 0:
            pending += n
        elif t < closes:
            pending += n * (closes - t) / (closes - opens)
    return math.ceil(pending)


def transitions(roster: Roster, start: datetime, end: datetime) -> list[datetime]:
    """Every moment in [start, end) at which headcount changes: what the scheduler wakes for."""
    edges = {x for a, b, _ in intervals(roster, start, end) for x in (a, b) if start <= x < end}
    return sorted(edges)
