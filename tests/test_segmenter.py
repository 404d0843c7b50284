import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closedloop.errors import ConfigError
from closedloop.estimation.segmenter import IntervalSegmenter


def _run(seg: IntervalSegmenter, x: np.ndarray, ts: np.ndarray, cuts: list[int]):
    out = []
    edges = [0, *sorted(cuts), x.shape[0]]
    for a, b in itertools.pairwise(edges):
        out += seg.push(x[a:b], ts[a:b])
    return out


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([1000.0, 2048.0, 4000.0]),
    stim_hz=st.sampled_from([20.0, 25.0, 35.0, 50.0]),
    n=st.integers(50, 3000),
    cuts=st.lists(st.integers(0, 3000), max_size=40),
)
def test_boundaries_are_absolute_on_the_sample_grid_for_any_chunking(rate, stim_hz, n, cuts):
    x = np.arange(n * 2, dtype=float).reshape(n, 2)
    ts = np.arange(n) / rate
    seg = IntervalSegmenter(2, rate, 1.0 / stim_hz)
    intervals = _run(seg, x, ts, [c for c in cuts if c < n])
    per = rate / stim_hz
    for k, iv in enumerate(intervals):
        start, stop = round(k * per), round((k + 1) * per)  # independent expectation: no drift
        assert iv.index == k and iv.start_sample == start
        np.testing.assert_array_equal(iv.samples, x[start:stop])
        np.testing.assert_array_equal(iv.timestamps, ts[start:stop])
    expected = sum(1 for k in range(1, n + 1) if round(k * per) <= n)
    assert len(intervals) == expected


def test_interval_length_change_starts_at_the_next_boundary():
    seg = IntervalSegmenter(1, 1000.0, 0.02)
    x = np.arange(200, dtype=float)[:, None]
    first = seg.push(x[:10], x[:10, 0])
    assert first == []
    seg.set_interval_s(0.05)  # current interval keeps 20 samples, the next ones 50
    ivs = seg.push(x[10:], x[10:, 0])
    assert [iv.samples.shape[0] for iv in ivs] == [20, 50, 50, 50]
    assert [iv.start_sample for iv in ivs] == [0, 20, 70, 120]


def test_emitted_intervals_are_not_overwritten_by_later_pushes():
    seg = IntervalSegmenter(1, 100.0, 0.1)
    a = seg.push(np.ones((10, 1)), np.arange(10.0))[0]
    seg.push(np.zeros((10, 1)), np.arange(10.0, 20.0))
    assert a.samples.sum() == 10


def test_too_short_interval_is_refused():
    with pytest.raises(ConfigError, match="shorter than 2 samples"):
        IntervalSegmenter(1, 100.0, 0.01)


def _pulse_reference(
    n: int, pulses: list[int], window: int, longest: int, lead: int = 0
) -> list[tuple[int, int, int | None]]:
    """Independent expectation for PulseSegmenter: (start, stop, the pulse opening it or None) of every complete
    interval, an interval beginning ``lead`` samples before its pulse but after the previous pulse (and not before
    the previous interval's end)."""
    out = []
    pulses = sorted(set(pulses))
    cur, opener, k = 0, None, 0
    if pulses and pulses[0] - lead <= 0:
        opener, k = pulses[0], 1
    while True:
        nxt = pulses[k] if k < len(pulses) else None
        end = cur + (longest if opener is not None else window)
        cut = None if nxt is None else max(nxt - lead, cur if opener is None else opener + 1)
        if cut is not None and cut <= end:
            end = cut
        if end == cur:  # the pulse opens the window begun here
            opener, k = nxt, k + 1
            continue
        if end > n or (end != cut and end + lead > n):  # not final before the stream has gone past it
            return out
        out.append((cur, end, opener))
        cur = end
        opener = nxt if end == cut else None
        k += end == cut


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(2, 2000),
    pulses=st.lists(st.integers(0, 1999), max_size=60),
    cuts=st.lists(st.integers(0, 2000), max_size=30),
    lead=st.sampled_from([0, 0, 1, 3, 25]),
)
def test_pulse_segmenter_intervals_whatever_the_chunking(n, pulses, cuts, lead):
    from closedloop.estimation.segmenter import PulseSegmenter

    rate = 1000.0
    x = np.arange(n * 2, dtype=float).reshape(n, 2)
    ts = 100.0 + np.arange(n) / rate
    seg = PulseSegmenter(2, rate, window_s=0.02, max_interval_s=0.05, lead_s=lead / rate)
    p = np.array(sorted({q for q in pulses if q < n}), dtype=np.int64)
    out = []
    for a, b in itertools.pairwise([0, *sorted(c for c in cuts if c < n), n]):
        out += seg.push(x[a:b], ts[a:b], p[(p >= a) & (p < b)])
    expected = _pulse_reference(n, p.tolist(), 20, 50, lead)
    assert [(iv.start_sample, iv.start_sample + iv.samples.shape[0]) for iv, _ in out] == [e[:2] for e in expected]
    for k, ((iv, times), (_, _, opener)) in enumerate(zip(out, expected, strict=True)):
        a, b = iv.start_sample, iv.start_sample + iv.samples.shape[0]
        assert iv.index == k
        np.testing.assert_array_equal(iv.samples, x[a:b])
        np.testing.assert_array_equal(iv.timestamps, ts[a:b])
        assert times == ([] if opener is None else [ts[opener]])  # the pulse's own time, inside the interval
        assert opener is None or a <= opener < b
    rest = seg.flush()
    done = out[-1][0].start_sample + out[-1][0].samples.shape[0] if out else 0
    assert [iv.start_sample for iv, _ in rest] == ([done] if n - done >= 2 else [])


def test_pulse_segmenter_intervals_are_not_overwritten_by_later_pushes():
    from closedloop.estimation.segmenter import PulseSegmenter

    seg = PulseSegmenter(1, 100.0, window_s=0.05)
    first = seg.push(np.ones((12, 1)), np.arange(12.0), [0, 5, 10])
    seg.push(np.zeros((12, 1)), np.arange(12.0, 24.0), [])
    assert [iv.samples.sum() for iv, _ in first] == [5.0, 5.0]
