"""The desired-size rule, by example and by property (hypothesis)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.domain.roster import (
    Event,
    ProvisioningRate,
    Roster,
    Shift,
    desired_size,
    headcount,
    transitions,
)

WEEKDAYS = frozenset(range(5))
RATE = ProvisioningRate(boot_s=6, per_second=0.5)


def centre(tz="Europe/Berlin", **kw):
    shifts = (Shift("early", WEEKDAYS, time(6), time(14), 30), Shift("late", WEEKDAYS, time(14), time(22), 20),
              Shift("night", frozenset(range(7)), time(22), time(6), 5),
              Shift("weekend", frozenset({5, 6}), time(9), time(17), 8))
    return Roster(pool="sales", timezone=tz, shifts=shifts, **kw)


def local(tz, *args):
    return datetime(*args, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def test_shifts_overlap_and_cross_midnight():
    r = centre()
    assert headcount(r, local("Europe/Berlin", 2026, 11, 24, 10)) == 30
    assert headcount(r, local("Europe/Berlin", 2026, 11, 24, 23)) == 5  # night starts Tuesday 22:00
    assert headcount(r, local("Europe/Berlin", 2026, 11, 25, 5, 59)) == 5  # ...and ends Wednesday 06:00
    assert headcount(r, local("Europe/Berlin", 2026, 11, 28, 12)) == 8  # Saturday
    peak = Event("8x promo", local("Europe/Berlin", 2026, 11, 27, 13), local("Europe/Berlin", 2026, 11, 27, 17), 200)
    r = centre(events=(peak,))
    assert headcount(r, local("Europe/Berlin", 2026, 11, 27, 14)) == 220  # overlapping adds up


def test_holidays_cancel_weekly_shifts_but_not_events():
    xmas = date(2026, 12, 25)
    event = Event("sale", local("Europe/Berlin", 2026, 12, 25, 10), local("Europe/Berlin", 2026, 12, 25, 12), 7)
    r = centre(holidays=frozenset({xmas}), events=(event,))
    assert headcount(r, local("Europe/Berlin", 2026, 12, 25, 11)) == 7
    assert headcount(r, local("Europe/Berlin", 2026, 12, 24, 11)) == 30


def test_dst_keeps_wall_clock_shift_times():
    r = centre()
    # the early shift starts at 06:00 local before and after the switch to summer time (29 March 2026)
    for day in (27, 30):
        start = local("Europe/Berlin", 2026, 3, day, 6)
        assert headcount(r, start) == 30 + 0 and headcount(r, start - timedelta(minutes=1)) == 5
    # the night crossing the autumn switch (25 October 2026) lasts 9 hours, still ends at 06:00 local
    assert headcount(r, local("Europe/Berlin", 2026, 10, 26, 5, 59)) == 5


def test_prewarm_reaches_headcount_plus_buffer_by_the_start():
    r = centre(buffer_min=2, buffer_pct=10, prewarm=timedelta(minutes=20))
    start = local("Europe/Berlin", 2026, 11, 24, 6)
    assert desired_size(r, start - timedelta(minutes=20), 0, RATE) == 33  # 30 + max(2, 3)
    assert desired_size(r, start - timedelta(minutes=21), 0, RATE) == 5 + 2  # still the night


def test_transitions_are_the_edges():
    r = centre()
    day = transitions(r, local("Europe/Berlin", 2026, 11, 24, 0), local("Europe/Berlin", 2026, 11, 25, 0))
    hours = [t.astimezone(ZoneInfo("Europe/Berlin")).hour for t in day]
    assert hours == [6, 14, 22]


# --- properties ----------------------------------------------------------------------------------

zones = st.sampled_from(["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney", "UTC"])
shift_st = st.builds(
    Shift, name=st.just("s"), days=st.frozensets(st.integers(0, 6), min_size=1),
    start=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    end=st.times().map(lambda t: t.replace(second=0, microsecond=0)), headcount=st.integers(0, 80))
roster_st = st.builds(
    Roster, pool=st.just("p"), timezone=zones, shifts=st.lists(shift_st, max_size=4).map(tuple),
    buffer_min=st.integers(0, 5), buffer_pct=st.floats(0, 50), min_size=st.integers(0, 10),
    max_size=st.integers(10, 400), prewarm=st.timedeltas(timedelta(0), timedelta(hours=2)))
instants = st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC))


@settings(max_examples=150, deadline=None)
@given(roster_st, instants, st.integers(0, 400))
def test_never_below_live_sessions_and_within_bounds(r, t, live):
    live = min(live, r.max_size)
    size = desired_size(r, t, live, RATE)
    assert size >= live
    assert r.min_size <= size <= r.max_size or size == live


@settings(max_examples=150, deadline=None)
@given(roster_st, instants)
def test_each_shift_start_is_covered_from_the_lead_time_on(r, t):
    for start in transitions(r, t, t + timedelta(days=2))[:6]:
        for before in (r.prewarm, r.prewarm / 2, timedelta(0)):
            moment = start - before
            want = min(r.max_size, max(r.min_size, headcount(r, start) + _buffer(r, headcount(r, start))))
            assert desired_size(r, moment, 0, RATE) >= want


def _buffer(r, people):
    from controlplane.domain.roster import buffer

    return buffer(r, people)


@settings(max_examples=100, deadline=None)
@given(roster_st, instants)
def test_same_answer_in_any_timezone_representation(r, t):
    other = t.astimezone(ZoneInfo("Pacific/Auckland"))
    assert desired_size(r, t, 3, RATE) == desired_size(r, other, 3, RATE)


def test_expected_arrivals_spread_over_the_margin():
    from controlplane.domain.roster import expected_arrivals

    r = Roster(pool="p", timezone="UTC", shifts=(Shift("day", frozenset(range(7)), time(8), time(16), 20),),
               arrival_margin=timedelta(minutes=10))
    start = datetime(2026, 11, 24, 8, tzinfo=UTC)
    lead = timedelta(minutes=30)
    assert expected_arrivals(r, start - timedelta(minutes=20), lead) == 20  # the window has not opened
    assert expected_arrivals(r, start, lead) == 10  # half the window is still ahead
    assert expected_arrivals(r, start + timedelta(minutes=10), lead) == 0
    assert expected_arrivals(r, start - timedelta(minutes=31), lead) == 0  # beyond the lead time


# --- the derived lead time (no prewarm set: boot time + peak need at the measured rate) -----------

def test_derived_lead_time_uses_the_concurrent_peak_not_the_largest_entry():
    from controlplane.domain.roster import lead_time

    promo = Event("promo", local("Europe/Berlin", 2026, 11, 27, 13), local("Europe/Berlin", 2026, 11, 27, 17), 200)
    r = centre(events=(promo,), buffer_pct=10, arrival_margin=timedelta(0))
    t = local("Europe/Berlin", 2026, 11, 27, 0)
    peak = 230 + 23  # the early shift (30) and the promotion (200) at once, plus 10 %
    assert lead_time(r, RATE, t) == timedelta(seconds=RATE.boot_s + peak / RATE.per_second + 60)


@st.composite
def derived_roster_and_instant(draw):
    """A roster without a prewarm setting, with events stacked on its shifts near the instant."""
    t = draw(instants)
    events = draw(st.lists(st.builds(
        lambda offset, hours, n: Event("e", t + offset, t + offset + timedelta(hours=hours), n),
        st.timedeltas(timedelta(0), timedelta(days=2)), st.integers(1, 8), st.integers(1, 120)), max_size=3))
    r = draw(roster_st.map(lambda r: dataclasses.replace(r, prewarm=None, events=tuple(events))))
    margin = draw(st.timedeltas(timedelta(0), timedelta(minutes=30)).map(lambda d: d - d % timedelta(minutes=1)))
    return dataclasses.replace(r, arrival_margin=margin), t


@settings(max_examples=150, deadline=None)
@given(derived_roster_and_instant())
def test_derived_lead_time_boots_every_start_in_time(case):
    """From boot time + need/rate + a minute + the margin before any start on, the pool wants that
    start's full need: however entries stack, booting them at the measured rate ends by the start."""
    r, t = case
    for start in transitions(r, t, t + timedelta(days=2))[:8]:
        people = headcount(r, start)
        need = people + _buffer(r, people)
        booting = timedelta(seconds=RATE.boot_s + need / RATE.per_second + 60) + r.arrival_margin
        want = min(r.max_size, max(r.min_size, need))
        assert desired_size(r, start - booting, 0, RATE) >= want, (start, need)


@settings(max_examples=100, deadline=None)
@given(derived_roster_and_instant())
def test_peak_headcount_is_the_most_rostered_at_any_edge(case):
    from controlplane.domain.roster import peak_headcount

    r, t = case
    end = t + timedelta(days=2)
    assert peak_headcount(r, t, end) == max(headcount(r, u) for u in [t, *transitions(r, t, end)])
