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
