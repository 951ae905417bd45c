"""calls.lateness: how late finals come, and the number of live calls learned from it."""

from app.calls.lateness import MIN_FINALS, WINDOW_S, CallLimit, RecentLateness, starting_limit


def test_the_90th_percentile_of_the_last_window_and_nothing_from_too_few_finals() -> None:
    late = RecentLateness()
    for i in range(MIN_FINALS - 1):
        late.add(0.5, call_started=90.0, now=100.0 + i)
    assert late.p90(now=110.0) == 0.0  # seven finals say nothing about the load
    late.add(0.5, call_started=90.0, now=107.5)
    assert late.p90(now=108.0) == 0.5
    for i in range(20):
        late.add(0.05, call_started=105.0, now=108.0 + i * 0.1)
    assert late.p90(now=110.0) == 0.5  # 8 of 28 late: the 90th percentile is
    assert late.p90(since=100.0, now=110.0) == 0.05  # but not the calls let in since 100 s
    assert late.p90(now=100.0 + WINDOW_S + 7.6) == 0.05  # those eight have left the window


def test_the_limit_drops_when_calls_let_in_under_it_are_late_and_creeps_back() -> None:
    limit = CallLimit(late_s=0.2, raise_every_s=30.0)
    assert limit.update(live=24, late=0.1, late_since_change=0.1, now=0.0) is None  # in time
    assert limit.update(live=24, late=0.6, late_since_change=0.6, now=1.0) == 18
    assert limit.changed == 1.0
    # The engine catches up on the calls from before: late, but none let in since.
    assert limit.update(live=3, late=2.5, late_since_change=0.0, now=15.0) == 18
    assert limit.update(live=18, late=0.4, late_since_change=0.4, now=40.0) == 13  # 18 is too many
    assert limit.update(live=13, late=0.1, late_since_change=0.1, now=60.0) == 13  # in time: held ...
    assert limit.update(live=13, late=0.1, late_since_change=0.1, now=70.0) == 14  # ... one more every 30 s
    assert limit.update(live=9, late=0.1, late_since_change=0.1, now=200.0) == 14  # not at it: nothing learned
    assert CallLimit(late_s=0.2).update(live=1, late=0.9, late_since_change=0.9, now=0.0) == 1  # never below one


def test_no_threshold_learns_nothing() -> None:
    assert CallLimit(late_s=0.0).update(live=50, late=5.0, late_since_change=5.0, now=0.0) is None


def test_once_a_limit_is_learned_calls_are_let_in_one_at_a_time() -> None:
    limit = CallLimit(late_s=0.2, admit_every_s=1.0)
    limit.admit(now=0.0)
    assert not limit.paced(now=0.1)  # nothing learned: as fast as they come
    limit.update(live=20, late=0.5, late_since_change=0.5, now=1.0)
    limit.admit(now=2.0)
    assert limit.paced(now=2.5) and not limit.paced(now=3.0)


def test_a_machine_starts_with_as_many_calls_as_its_speed_suggests() -> None:
    assert starting_limit(encode_ms=44.0, workers=2) == 15  # docs/engine.md's machine: what it learned
    assert starting_limit(encode_ms=88.0, workers=2) == 7  # half as fast: half the calls
    assert starting_limit(encode_ms=44.0, workers=4) == 30  # twice the workers (cores): twice
    assert starting_limit(encode_ms=11.0, workers=2, most=32) == 32  # never past [asr] max_live_calls
    assert starting_limit(encode_ms=5000.0, workers=2) == 1  # never below one


def test_a_starting_limit_lets_a_burst_in_at_once_and_moves_as_a_learned_one() -> None:
    limit = CallLimit(late_s=0.2, raise_every_s=30.0, admit_every_s=1.0, start=15, now=0.0)
    limit.admit(now=1.0)
    assert not limit.paced(now=1.1)  # callers arriving together are let in together ...
    assert limit.update(live=15, late=0.0, late_since_change=0.0, now=2.0) == 15  # ... up to it
    assert limit.update(live=15, late=0.1, late_since_change=0.1, now=31.0) == 16  # in time at it: one more
    assert limit.update(live=16, late=0.4, late_since_change=0.4, now=40.0) == 12  # late: a quarter off
    limit.admit(now=41.0)
    assert limit.paced(now=41.5)  # and from then on one call at a time
    assert CallLimit(late_s=0.0, start=15).update(live=50, late=5.0, late_since_change=5.0, now=0.0) is None
