"""Batched estimation (``IntervalEstimator.step_many``) gives the same estimates as one interval at a time.

Two independent estimators see the same intervals: one through ``step`` per interval (with or without
``settle`` after each, as the live loop does), the other through ``step_many`` over a random split into batches
(and, inside, random internal batch sizes). Every field of
every Estimate must agree: warnings exactly, numbers to rtol 1e-9 (the batch sums some things in another
order), NaN where the other has NaN.
"""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.estimation.segmenter import Interval
from closedloop.estimation.volitional import METHODS
from closedloop.types import Estimate, StreamInfo

FS = 2000.0
T0 = 100.0
# pulse patterns per interval: none; one anywhere; on the first sample; a doublet (a second pulse inside the
# blanking window); two well apart; near the end (its blanking runs to the end of the interval); a delivery
# time after the interval (ignored) or before it (placed on the first sample); one the stimulator applied well
# after its time (its artifact past the search window: found up to pulse_late_s after it)
KINDS = ("none", "none", "one", "one", "first", "doublet", "two", "touching", "end", "late", "early", "applied_late")


def assert_same_estimate(a: Estimate, b: Estimate, what: str = "") -> None:
    """Every field equal: exactly for index, flags and warnings, to rtol 1e-9 for numbers (NaN == NaN)."""
    for f in dataclasses.fields(Estimate):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("index", "has_pulse", "warnings"):
            assert x == y, f"{what} {f.name}: {x!r} != {y!r}"
            continue
        # FInsm5 is of the order of 1e-12 Hz^-6: compared relatively only
        atol = 0.0 if f.name == "channel_fi_nsm5" else 1e-12
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=atol, equal_nan=True, err_msg=f"{what} {f.name}")


@st.composite
def scenarios(draw):
    n_ch = draw(st.integers(1, 3))
    n_iv = draw(st.integers(1, 30))
    short_or_long = st.one_of(st.integers(2, 12), st.integers(13, 90), st.sampled_from([40, 41, 200]))
    lens = draw(st.lists(short_or_long, min_size=n_iv, max_size=n_iv))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=n_iv, max_size=n_iv))
    config = EstimatorConfig(
        method=draw(st.sampled_from(METHODS)),
        history=draw(st.integers(1, 3)),
        comb_scale=draw(st.booleans()),
        pulse_search_s=draw(st.sampled_from([0.0, 0.002, 0.005])),
        pulse_lead_s=draw(st.sampled_from([0.0, 0.0, 0.002])),
        pulse_late_s=draw(st.sampled_from([0.0, 0.006, 0.020])),
        blank_s=draw(st.sampled_from([0.0, 0.0005, 0.003])),
        mwave_window_s=draw(st.sampled_from([(0.003, 0.020), (0.004, 0.006), (0.003, 0.0035)])),
        fit_window_s=draw(st.sampled_from([None, None, (0.003, 0.005)])),
        smoothing_s=draw(st.sampled_from([0.0, 0.05])),
        spectral_window_s=draw(st.sampled_from([0.1, 0.25])),
        spectral_update_s=draw(st.sampled_from([0.01, 0.05, 10.0])),
        min_volitional_s=draw(st.sampled_from([0.005, 0.0015])),
        mwave_reference_pulses=draw(st.integers(1, 3)),
        mvc_uv=draw(st.sampled_from([None, 50.0])),
        notch_hz=draw(st.sampled_from([None, 50.0])),
        history_reset_s=draw(st.sampled_from([0.01, 0.25])),
    )
    return {
        "n_ch": n_ch,
        "lens": lens,
        "kinds": kinds,
        "config": config,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "units": draw(st.sampled_from(["uV", "uV", "mV"])),
        "nan": draw(st.sampled_from([None, None, "samples", "intervals"])),
        "amps": draw(st.sampled_from(["constant", "varying", "unknown"])),
        "float32": draw(st.booleans()),
        "out_of_order": draw(st.sampled_from([False, False, True])),
        "split": draw(st.lists(st.integers(1, 8), min_size=1, max_size=8)),
        "batch_elements": draw(st.sampled_from([1 << 18, 300, 64])),
        "min_batch": draw(st.sampled_from([2, 2, 5])),  # 2: even the smallest batches go through the batch code
        # the live loop settles each step's deferred work (nlms weight step, spectral update) after the pulse;
        # otherwise the next step does it first: the estimates must not depend on which
        "settle": draw(st.booleans()),
        # the live loop's lookahead after each chunk: chunk sizes (None: no lookahead), and which pulses it is
        # told of (all of the interval's, or none yet: step() then finds the pulses differ)
        "chunks": draw(st.one_of(st.none(), st.lists(st.integers(1, 12), min_size=1, max_size=4))),
        "told": draw(st.sampled_from(["all", "all", "none"])),
    }


def build(sc):
    """Intervals of EMG-like noise on a DC offset, with an artifact (a few samples after the delivery time) and an
    evoked response at each pulse; their pulse times and amplitudes."""
    rng = np.random.default_rng(sc["seed"])
    lens, n_ch = sc["lens"], sc["n_ch"]
    n = sum(lens)
    x = rng.normal(0.0, 30.0, (n, n_ch)) + rng.normal(0.0, 1000.0, n_ch)
    ts = T0 + np.arange(n) / FS
    times, amps, pos = [], [], 0
    for length, kind in zip(lens, sc["kinds"], strict=True):
        off = int(rng.integers(0, length))
        at = {
            "none": [],
            "one": [pos + off],
            "first": [pos],
            "doublet": [pos + off, pos + off + int(rng.integers(0, 4))],
            "two": [pos + off // 2, pos + off // 2 + int(rng.integers(6, 40))],
            # two pulses exactly a blanking window apart, the second near the end: their windows touch
            "touching": [pos + length - 8, pos + length - 2],
            "end": [pos + max(0, length - int(rng.integers(1, 4)))],
            "late": [pos + length + 3],
            "early": [pos - 2],
            "applied_late": [pos + off],
        }[kind]
        for p in at:
            if 0 <= p < n:
                delay = (12, 40) if kind == "applied_late" else (0, 4)
                q = min(n - 1, p + int(rng.integers(*delay)))  # the artifact lands a little after the delivery time
                k = min(n - q, 30)
                x[q : q + k] += (rng.uniform(2e3, 5e3) * np.exp(-np.arange(k) / 2.0))[:, None]
                x[q : q + k] += (400.0 * np.sin(np.arange(k) / 3.0) * (np.arange(k) >= 6))[:, None]
        times.append([T0 + p / FS for p in at])
        amps.append({"constant": 10.0, "varying": float(rng.uniform(5.0, 15.0)), "unknown": math.nan}[sc["amps"]])
        pos += length
    if sc["nan"] == "samples":
        x[rng.random(n) < 0.01, int(rng.integers(0, n_ch))] = np.nan
    elif sc["nan"] == "intervals":  # whole stretches: the Welch segments over them are rejected
        for a in rng.integers(0, n, 3):
            x[a : a + 150, 0] = np.nan
    if sc["float32"]:
        x = x.astype(np.float32)
    intervals, pos = [], 0
    for k, length in enumerate(lens):
        t = ts[pos : pos + length].copy()
        if sc["out_of_order"] and k % 3 == 2:
            t -= 2.5 / FS  # overlaps the previous interval's times (a clock step): the times are not sorted
        intervals.append(Interval(k, pos, x[pos : pos + length].copy(), t))
        pos += length
    return intervals, times, amps


def _look_ahead(est, iv, times, chunks, told):
    """Feed ``iv`` to ``est.lookahead`` as a live loop does, chunk by chunk, in arrays whose samples not yet
    received are garbage (NaN, huge, -inf); return the interval (the same arrays, complete) for ``step``."""
    n = iv.samples.shape[0]
    buf = np.empty_like(iv.samples)
    huge = np.finfo(buf.dtype).max
    buf[:] = np.resize(np.array([np.nan, huge, -np.inf], dtype=buf.dtype), buf.shape)
    ts = np.full_like(iv.timestamps, np.nan)
    live = Interval(iv.index, iv.start_sample, buf, ts)
    got, k = 0, 0
    while got < n:
        got = min(n, got + chunks[k % len(chunks)])
        k += 1
        buf[:got], ts[:got] = iv.samples[:got], iv.timestamps[:got]
        if got < n:
            est.lookahead(live, got, times if told == "all" else ())
    return live


def run_both(sc):
    info = StreamInfo("emg", "EMG", FS, tuple(f"c{i}" for i in range(sc["n_ch"])), (sc.get("units", "uV"),))
    ivs, times, amps = build(sc)
    one = IntervalEstimator(info, sc["config"])
    many = IntervalEstimator(info, sc["config"])
    many.batch_elements = sc["batch_elements"]
    many.min_batch = sc.get("min_batch", 2)
    expected = []
    for iv, t, a in zip(ivs, times, amps, strict=True):
        if sc.get("chunks"):
            iv = _look_ahead(one, iv, t, sc["chunks"], sc["told"])
        expected.append(one.step(iv, t, a))
        if sc.get("settle"):
            one.settle()
    got, i, j = [], 0, 0
    while i < len(ivs):
        k = sc["split"][j % len(sc["split"])]
        got += many.step_many(ivs[i : i + k], times[i : i + k], amps[i : i + k])
        i, j = i + k, j + 1
    return expected, got


# an ill-conditioned fit (three past segments on a 7-sample window) once told the batch's order of summing
# the window products from a segment's own
ILL_CONDITIONED = {
    "n_ch": 1,
    "lens": [40, 41, 13, 13, 2, 2, 2, 2, 2, 2, 2, 13, 13, 14],
    "kinds": ["one"] * 4 + ["none"] * 10,
    "config": EstimatorConfig(
        method="gs",
        blank_s=0.0,
        min_volitional_s=0.0015,
        history=3,
        comb_scale=False,
        smoothing_s=0.0,
        spectral_window_s=0.1,
        spectral_update_s=0.01,
        mwave_reference_pulses=1,
        pulse_search_s=0.0,
        history_reset_s=0.01,
    ),
    "seed": 1162,
    "units": "uV",
    "nan": None,
    "amps": "constant",
    "float32": False,
    "out_of_order": False,
    "split": [2],
    "batch_elements": 1 << 18,
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
@example(ILL_CONDITIONED)
def test_step_many_equals_step_one_by_one(sc):
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant signal's M-wave reference can be 0
        expected, got = run_both(sc)
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


def _regular(n_ch=2, n_iv=120, period=41, kind="one", method="nlms", **kw):
    lens = [period] * n_iv
    config = EstimatorConfig(method=method, **kw)
    sc = {
        "n_ch": n_ch,
        "lens": lens,
        "kinds": [kind] * n_iv,
        "config": config,
        "seed": 7,
        "nan": None,
        "amps": "constant",
        "float32": False,
        "out_of_order": False,
        "split": [25, 1, 40, 3],
        "batch_elements": 1 << 18,
    }
    return sc


@pytest.mark.parametrize("method", METHODS)
def test_long_pulse_runs_with_spectra(method):
    """Long runs of 20-ms pulse intervals (the replay case), long enough for the spectral indices."""
    sc = _regular(method=method, kind="first", spectral_window_s=0.25, mwave_window_s=(0.003, 0.006))
    expected, got = run_both(sc)
    assert np.isfinite(expected[-1].channel_mdf_hz).all() and np.isfinite(expected[-1].channel_effort_uv).all()
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


def test_pauses_reset_the_history_in_a_batch():
    """Bursts of pulses with pauses between them (windows longer than history_reset_s) in one batch."""
    sc = _regular(method="gs", kind="first", history_reset_s=0.01)
    sc["kinds"] = (["first"] * 10 + ["none"] * 3) * 9 + ["first"] * 3
    sc["split"] = [60, 60]
    expected, got = run_both(sc)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


def test_blanking_to_the_end_of_short_intervals():
    """Pulses whose blanking runs to the end of their interval, followed by intervals with pulses: the jump
    into the next interval is from the held, blanked sample."""
    sc = _regular(n_iv=40, period=5, kind="end", blank_s=0.003, pulse_search_s=0.005)
    sc["lens"] = [5, 3, 8, 4, 12, 2] * 6 + [40] * 4
    expected, got = run_both(sc)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


@pytest.mark.parametrize("pulse_search_s", [0.0, 0.005])
def test_blanking_windows_that_reach_the_next_interval(pulse_search_s):
    """Touching windows and windows covering a whole short interval, in chains (the value held to an
    interval's end comes from the last sample before its window, possibly intervals back)."""
    sc = _regular(n_iv=12, kind="one", blank_s=0.003, pulse_search_s=pulse_search_s)
    sc["lens"] = [40, 3, 10, 2, 2, 30, 20, 4, 40, 3, 3, 40] * 3
    kinds = ["one", "first", "touching", "first", "first", "end", "touching", "end", "two", "first", "first", "one"]
    sc["kinds"] = kinds * 3
    sc["split"] = [1, 4, 36]
    expected, got = run_both(sc)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


def test_pulses_in_intervals_of_very_different_lengths():
    """One long interval among many short ones, all with pulses (the median jump per interval)."""
    sc = _regular(n_iv=21, kind="one")
    sc["lens"] = [600] + [5] * 20
    expected, got = run_both(sc)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


def test_rare_spectral_updates_bound_the_queued_responses():
    """Without spectral updates for many pulses, the queued prediction responses are folded in anyway."""
    sc = _regular(n_iv=200, kind="first", spectral_update_s=10.0)
    sc["split"] = [2]
    expected, got = run_both(sc)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


@pytest.mark.parametrize("method", ["comb", "gs", "nlms"])
def test_fit_windows_cut_short_by_short_segments(method):
    """Segments shorter than the M-wave window fit on what is there (down to the blanking) next to full ones."""
    sc = _regular(
        n_iv=30, kind="first", method=method, blank_s=0.0005, mwave_window_s=(0.004, 0.006), min_volitional_s=0.0015
    )
    sc["lens"] = [40, 5, 40, 40, 6, 40, 9, 40, 40, 40] * 3
    expected, got = run_both(sc)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


def test_gaps_in_the_signal_reject_welch_segments_inside_a_batch():
    """Stretches of non-finite samples: their intervals are NaN, the Welch segments over them are dropped."""
    sc = _regular(n_iv=150, kind="first", spectral_window_s=0.25)
    sc["nan"] = "intervals"
    sc["split"] = [50, 100]
    expected, got = run_both(sc)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_estimate(a, b, f"interval {k}")


def test_the_comparison_detects_a_difference():
    """The check itself: a perturbed estimate (one channel's M-wave by 1e-8, one warning) is caught."""
    expected, _ = run_both(_regular(n_iv=6, kind="first"))
    e = expected[-1]
    ptp = e.channel_mwave_ptp_uv.copy()
    assert np.isfinite(ptp).all()
    ptp[-1] *= 1 + 1e-8
    with pytest.raises(AssertionError):
        assert_same_estimate(e, dataclasses.replace(e, channel_mwave_ptp_uv=ptp))
    with pytest.raises(AssertionError):
        assert_same_estimate(e, dataclasses.replace(e, warnings=(*e.warnings, "x")))
