"""Costs from rates and wall time; duration parsing and formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionkit.costs import session_costs
from sessionkit.errors import UsageError
from sessionkit.timefmt import fmt_duration, fmt_money, parse_duration, parse_rate

T0 = "2026-01-01T00:00:00+00:00"


def test_costs_are_rate_times_open_wall_time():
    session = {"started_at": T0, "ended_at": "2026-01-01T02:00:00+00:00",
               "gpu_rate_usd_per_h": 2.5, "ai_rate_usd_per_h": 6.0}
    steps = [{"id": "a", "status": "passed", "started_at": T0, "duration_s": 1800.0},
             {"id": "b", "status": "failed", "started_at": T0, "duration_s": 900.0}]
    c = session_costs(session, steps)
    assert (c["gpu_usd"], c["ai_usd"], c["total_usd"]) == (5.0, 12.0, 17.0)
    assert c["per_step"]["a"] == {"seconds": 1800.0, "gpu_usd": 1.25, "ai_usd": 3.0, "total_usd": 4.25}
    assert c["per_passed_step_usd"] == 17.0


def test_unset_rates_stay_unset():
    session = {"started_at": T0, "ended_at": "2026-01-01T01:00:00+00:00",
               "gpu_rate_usd_per_h": None, "ai_rate_usd_per_h": 4.0}
    c = session_costs(session, [])
    assert c["gpu_usd"] is None and c["ai_usd"] == 4.0 and c["total_usd"] == 4.0
    assert c["per_passed_step_usd"] is None
    none = session_costs({**session, "ai_rate_usd_per_h": None}, [])
    assert none["total_usd"] is None and fmt_money(none["total_usd"]) == "rate not set"


def test_open_session_costs_up_to_now():
    session = {"started_at": T0, "ended_at": None, "gpu_rate_usd_per_h": 3.6, "ai_rate_usd_per_h": None}
    assert session_costs(session, [], now="2026-01-01T00:10:00+00:00")["gpu_usd"] == pytest.approx(0.6)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("45s", 45), ("2h", 7200), ("1h30m", 5400),
                                           ("1.5h", 5400), ("250ms", 0.25), ("10 m", 600), ("1d", 86400),
                                           ("1d2h3m4s5ms", 93784.005)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "-5", "5x", "h", "1h x", "inf", "nan",
                                  "\u0661\u0660s", "1_0s",  # non-ASCII digits, underscores
                                  "99999999999999999999999999d", "367d",  # no session lasts that
                                  "0.0000001ms", "0.5ms",  # below any clock's resolution here
                                  "30s30s", "1m1h", "1m2min", "90M", "2H"])  # repeated, out of order, capitals
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError, match="bad duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["90", "2", " 1.5 ", 7200, 2.0])
def test_a_bare_number_is_not_a_duration(text):
    """``--budget 2`` could mean two hours or two seconds: refused, with the unit to add."""
    number = str(text).strip()
    with pytest.raises(UsageError) as err:
        parse_duration(text)
    assert str(err.value) == (f"bad duration {text!r}: give it a unit, e.g. {number}s, {number}m or "
                              f"{number}h (a bare number is not taken as seconds)")


@given(st.text(max_size=20))
def test_parse_duration_never_raises_anything_else(text):
    try:
        assert parse_duration(text) > 0
    except UsageError:
        pass


@given(st.integers(min_value=1, max_value=10**6))
def test_duration_round_trip_through_seconds(n):
    assert parse_duration(f"{n}s") == n
    assert fmt_duration(n)  # never empty


def test_parse_rate():
    assert parse_rate("$2.50", "gpu rate") == 2.5 and parse_rate(None, "x") is None
    assert parse_rate(".5", "gpu rate") == 0.5 and parse_rate(3, "gpu rate") == 3.0
    # float() takes all of these; a rate is plain decimal ASCII digits
    for bad in ("cheap", "-1", "nan", "1_0", "\u0661\u0660", "1e3", "0x10", " ", "$"):
        with pytest.raises(UsageError):
            parse_rate(bad, "gpu rate")


@pytest.mark.parametrize("rate", ["1e308", "1e300", "1000001", "inf"])
def test_a_rate_beyond_any_machine_is_refused(rate):
    """A rate of 1e308 $/h was taken: costs became inf ('$inf'), and export and --json wrote
    Infinity, which is not JSON."""
    with pytest.raises(UsageError, match="per hour"):
        parse_rate(rate, "--gpu-rate")
    assert parse_rate("1000000", "--gpu-rate") == 1e6


def test_fmt_duration():
    assert [fmt_duration(s) for s in (None, 3.25, 45, 60, 90, 3725)] == ["-", "3.2 s", "45 s", "60 s",
                                                                          "1m30s", "1h02m"]


@pytest.mark.parametrize("value, text", [(0.0, "$0.00"), (0.004, "<$0.01"), (0.00001, "<$0.01"),
                                         (0.005, "$0.01"), (0.008, "$0.01"), (1234.5, "$1,234.50")])
def test_money_under_a_cent_is_not_shown_as_zero(value, text):
    """Parts of a cost under a cent show as <$0.01, so that two of them next to a total of $0.01
    do not read as $0.00 + $0.00."""
    assert fmt_money(value) == text


def _cents(text: str) -> int:
    return 0 if text == "<$0.01" else round(float(text.lstrip("$").replace(",", "")) * 100)


@pytest.mark.parametrize("parts, shown", [
    ([0.0152, 0.0367], ["$0.01", "$0.04", "$0.05"]),  # each rounded alone: $0.02 + $0.04, $0.05
    ([0.004, 0.004], ["$0.01", "<$0.01", "$0.01"]),  # a tie: the earlier part takes the cent
    ([0.001, 0.001], ["<$0.01", "<$0.01", "<$0.01"]),
    ([2.0, None], ["$2.00", "rate not set", "$2.00"]),
    ([None, None], ["rate not set"] * 3),
    ([0.0, 0.0], ["$0.00", "$0.00", "$0.00"]),
    ([1234.565, 0.29], ["$1,234.57", "$0.29", "$1,234.86"]),
    ([0.125, None], ["$0.13", "rate not set", "$0.13"]),  # as fmt_money(0.125) rounds it
    ([float("inf"), 1.0], ["$inf", "$1.00", "$inf"]),  # a damaged row: shown, no traceback
])
def test_money_parts_add_up_to_the_total_shown(parts, shown):
    from sessionkit.timefmt import fmt_money_parts

    assert fmt_money_parts(parts) == shown


@pytest.mark.parametrize("parts", [[1e308, 1e308], [float("nan"), 1.0], [-1.0, 2.0], [1e307, 0.0]])
def test_money_parts_of_rows_no_session_stores_do_not_fail(parts):
    """Costs are never below 0 or infinite, but a merged or damaged row may hold anything: each
    part is then shown as fmt_money shows it, and nothing raises (a rate of 1e308 overflowed)."""
    from sessionkit.timefmt import fmt_money, fmt_money_parts

    shown = fmt_money_parts(parts)
    assert shown == [fmt_money(p) for p in parts] + [fmt_money(sum(parts))]


@given(st.lists(st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)), min_size=1, max_size=4))
def test_money_parts_always_add_up_and_stay_within_a_cent(parts):
    """Whatever the parts: the shown parts sum to the shown total, the total is the sum rounded
    to the cent, and each shown part is within a cent of its value."""
    from sessionkit.timefmt import fmt_money_parts

    shown = fmt_money_parts(parts)
    assert len(shown) == len(parts) + 1
    known = [p for p in parts if p is not None]
    if not known:
        assert set(shown) == {"rate not set"}
        return
    texts = [t for t, p in zip(shown, parts) if p is not None]
    assert sum(_cents(t) for t in texts) == _cents(shown[-1]) or shown[-1] == "<$0.01"
    assert abs(_cents(shown[-1]) - sum(known) * 100) <= 0.5 + 1e-6 or shown[-1] == "<$0.01"
    for text, part in zip(texts, known):
        assert text == "<$0.01" and 0 < part < 0.01 or abs(_cents(text) - part * 100) < 1 + 1e-6
