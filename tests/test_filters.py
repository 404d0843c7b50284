"""Streaming filters: chunked output equals the offline scipy computation; known answers; configuration errors."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import signal

from closedloop.errors import ConfigError
from closedloop.estimation.filters import (
    Envelope,
    FilterChain,
    MovingRMS,
    SOSFilter,
    bandpass_sos,
    highpass_sos,
    lowpass_sos,
    notch_sos,
)

FS = 2048.0
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------------
# strategies


@st.composite
def signals(draw):
    """A (n, C) float64 signal: noise, sparse spikes, steps or zeros, at a random scale."""
    n = draw(st.integers(1, 3000))
    c = draw(st.integers(1, 8))
    scale = draw(st.sampled_from([1e-3, 1.0, 37.5, 1e3]))
    kind = draw(st.sampled_from(["noise", "spikes", "burst", "steps", "zeros", "offset_noise"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        x = rng.standard_normal((n, c))
    elif kind == "spikes":  # long silent stretches after loud samples: catches cancellation in running sums
        x = np.where(rng.random((n, c)) < 0.01, rng.standard_normal((n, c)) * 1e3, 0.0)
    elif kind == "burst":  # loud, then 1e-8 times quieter: running totals would swamp the quiet part
        x = rng.standard_normal((n, c)) * np.where(np.arange(n) < draw(st.integers(0, n)), 1e4, 1e-4)[:, None]
    elif kind == "steps":
        x = np.repeat(rng.standard_normal((n // 100 + 1, c)), 100, axis=0)[:n]
    elif kind == "zeros":
        x = np.zeros((n, c))
    else:
        x = 5.0 + rng.standard_normal((n, c))
    return x * scale


@st.composite
def signal_and_chunks(draw):
    """A signal and chunk lengths summing to its length, with 0- and 1-sample chunks likely."""
    x = draw(signals())
    n = x.shape[0]
    sizes = draw(
        st.lists(
            st.one_of(st.just(0), st.just(1), st.integers(0, 64), st.integers(0, n)),
            max_size=40,
        )
    )
    chunks, used = [], 0
    for s in sizes:
        s = min(s, n - used)
        chunks.append(s)
        used += s
    chunks.append(n - used)
    return x, chunks


def _feed(filt, x, chunks):
    out, i = [], 0
    for s in chunks:
        y = filt.step(x[i : i + s])
        assert y.shape == (s, x.shape[1])
        assert y.dtype == np.float64
        out.append(y)
        i += s
    return np.concatenate(out)


def _assert_close(got, want, x, atol_rel=1e-9):
    """rtol 1e-9 on each value plus an atol of ``atol_rel`` times the signal's largest magnitude."""
    scale = float(np.max(np.abs(x)))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=atol_rel * scale)


# ---------------------------------------------------------------------------------------------------------
# streaming == offline


@PROPERTY
@given(data=signal_and_chunks(), order=st.integers(1, 6), initial=st.sampled_from(["zeros", "first_sample"]))
def test_bandpass_streaming_equals_offline(data, order, initial):
    x, chunks = data
    sos = bandpass_sos(20.0, 450.0, FS, order)
    zi = np.zeros((sos.shape[0], 2, x.shape[1]))
    if initial == "first_sample":
        zi = signal.sosfilt_zi(sos)[:, :, None] * x[0][None, None, :]
    want, _ = signal.sosfilt(sos, x, axis=0, zi=zi)
    _assert_close(_feed(SOSFilter(sos, x.shape[1], initial), x, chunks), want, x)


@PROPERTY
@given(data=signal_and_chunks(), initial=st.sampled_from(["zeros", "first_sample"]))
def test_notch_chain_streaming_equals_offline(data, initial):
    x, chunks = data
    c = x.shape[1]
    notch = notch_sos(50.0, FS, quality=30.0, up_to_hz=500.0)
    hp = highpass_sos(10.0, FS, 2)
    chain = FilterChain([SOSFilter(hp, c, initial), SOSFilter(notch, c, initial)])
    y = x
    for sos in (hp, notch):
        zi = np.zeros((sos.shape[0], 2, c))
        if initial == "first_sample":
            zi = signal.sosfilt_zi(sos)[:, :, None] * y[0][None, None, :]
        y, _ = signal.sosfilt(sos, y, axis=0, zi=zi)
    _assert_close(_feed(chain, x, chunks), y, x)


@PROPERTY
@given(data=signal_and_chunks())
def test_envelope_streaming_equals_offline(data):
    x, chunks = data
    want = signal.sosfilt(lowpass_sos(6.0, FS, 2), np.abs(x), axis=0)
    _assert_close(_feed(Envelope(FS, x.shape[1]), x, chunks), want, x)


@PROPERTY
@given(data=signal_and_chunks(), window_s=st.sampled_from([0.0003, 0.001, 0.01, 0.0625, 0.2, 1.7]))
def test_moving_rms_streaming_equals_offline(data, window_s):
    x, chunks = data
    m = MovingRMS(FS, x.shape[1], window_s)
    w = round(window_s * FS)
    assert m.window == w
    want = np.sqrt(np.clip(signal.lfilter(np.ones(w) / w, 1, x**2, axis=0), 0, None))
    # Both sides sum non-negative squares without cancellation, so every window is accurate relative to its
    # own power: no absolute tolerance (a quiet stretch after a loud one must still match to 1e-9).
    _assert_close(_feed(m, x, chunks), want, x, atol_rel=0.0)


def test_reset_restarts_from_the_initial_state():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 3))
    for make in (
        lambda: SOSFilter(bandpass_sos(20, 450, FS), 3, "first_sample"),
        lambda: Envelope(FS, 3),
        lambda: MovingRMS(FS, 3, 0.05),
        lambda: FilterChain([SOSFilter(highpass_sos(10, FS), 3), MovingRMS(FS, 3, 0.01)]),
    ):
        f = make()
        first = f.step(x)
        f.step(rng.standard_normal((77, 3)))
        f.reset()
        np.testing.assert_array_equal(f.step(x), first)


def test_first_sample_state_is_visible_and_removes_the_start_transient():
    f = SOSFilter(lowpass_sos(50.0, FS), 2, initial="first_sample")
    assert f.zi is None
    x = np.tile([3.0, -7.0], (200, 1))
    np.testing.assert_allclose(f.step(x), x, rtol=1e-12)
    assert f.zi is not None and f.zi.shape == (2, 2, 2)
    g = SOSFilter(lowpass_sos(50.0, FS), 2)
    assert g.zi is not None and not g.zi.any()
    assert abs(g.step(x)[0, 0]) < 0.1  # starting at rest: a start transient


def test_zero_length_chunks_and_channel_errors():
    f = SOSFilter(bandpass_sos(20, 450, FS), 3)
    for filt in (f, Envelope(FS, 3), MovingRMS(FS, 3, 0.1), FilterChain([f])):
        y = filt.step(np.empty((0, 3)))
        assert y.shape == (0, 3) and y.dtype == np.float64
        with pytest.raises(ValueError, match=r"3 channels.*2 channels"):
            filt.step(np.zeros((5, 2)))
        with pytest.raises(ValueError, match="n_samples, n_channels"):
            filt.step(np.zeros(5))


# ---------------------------------------------------------------------------------------------------------
# known answers


def _gain(sos, f_hz, fs=FS):
    _, h = signal.sosfreqz(sos, worN=[f_hz], fs=fs)
    return abs(h[0])


def _sine(f_hz, seconds, amplitude=1.0, fs=FS, channels=1):
    t = np.arange(round(seconds * fs)) / fs
    return np.tile((amplitude * np.sin(2 * np.pi * f_hz * t))[:, None], (1, channels))


def _rms(x):
    return float(np.sqrt(np.mean(x**2)))


def test_bandpass_passes_the_centre_and_attenuates_outside():
    sos = bandpass_sos(20.0, 450.0, FS, 4)
    assert _gain(sos, math.sqrt(20.0 * 450.0)) == pytest.approx(1.0, abs=1e-3)
    assert _gain(sos, 5.0) < 0.01  # below -40 dB
    assert _gain(sos, 900.0) < 0.01
    # the same through the streaming filter, after the transient
    f = SOSFilter(sos, 1)
    y = f.step(_sine(100.0, 2.0))
    assert _rms(y[-2048:]) == pytest.approx(1 / math.sqrt(2), rel=0.01)
    y = SOSFilter(sos, 1).step(_sine(5.0, 2.0))
    assert _rms(y[-2048:]) < 0.01 / math.sqrt(2)


def test_notch_removes_mains_and_harmonics_and_keeps_the_rest():
    sos = notch_sos(50.0, FS, quality=30.0, up_to_hz=500.0)
    assert sos.shape == (9, 6)  # 50, 100, ..., 450 Hz
    settle = slice(-2048, None)  # the last second of three
    for f_hz in (50.0, 150.0):
        y = SOSFilter(sos, 2).step(_sine(f_hz, 3.0, 100.0, channels=2))
        attenuation_db = 20 * math.log10(_rms(y[settle]) / (100 / math.sqrt(2)))
        assert attenuation_db < -40.0, f"{f_hz} Hz: only {attenuation_db:.1f} dB"
    y = SOSFilter(sos, 1).step(_sine(80.0, 3.0, 100.0))
    assert _rms(y[settle]) == pytest.approx(100 / math.sqrt(2), rel=0.01)


def test_notch_harmonics_stop_below_the_limit():
    assert notch_sos(50.0, 1000.0).shape[0] == 9  # 50..450 < 490
    assert notch_sos(60.0, FS, up_to_hz=180.0).shape[0] == 2  # 60, 120 (180 is not below 180)
    assert notch_sos(400.0, 1000.0).shape[0] == 1


def test_moving_rms_of_a_sine_converges_to_amplitude_over_sqrt2():
    a = 250.0
    m = MovingRMS(FS, 2, 0.25)  # 512 samples = exactly 25 periods of 100 Hz at 2048 Hz
    y = m.step(_sine(100.0, 1.0, a, channels=2))
    np.testing.assert_allclose(y[512:], a / math.sqrt(2), rtol=1e-9)
    m = MovingRMS(FS, 1, 0.5)  # 18.5 periods of 37 Hz: the leftover half period costs < 1 %
    y = np.concatenate([m.step(c) for c in np.array_split(_sine(37.0, 2.0, a), 9)])
    np.testing.assert_allclose(y[1024:], a / math.sqrt(2), rtol=0.01)


def test_envelope_of_a_sine_converges_to_2a_over_pi():
    a = 80.0
    env = Envelope(FS, 1)
    y = np.concatenate([env.step(c) for c in np.array_split(_sine(100.0, 3.0, a), 17)])
    np.testing.assert_allclose(y[-1024:], 2 * a / math.pi, rtol=0.01)


# ---------------------------------------------------------------------------------------------------------
# configuration errors


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: bandpass_sos(0.0, 450.0, FS), "low_hz"),
        (lambda: bandpass_sos(20.0, 1024.0, FS), "high_hz"),
        (lambda: bandpass_sos(450.0, 20.0, FS), "low_hz"),
        (lambda: bandpass_sos(20.0, 450.0, -1.0), "rate_hz"),
        (lambda: bandpass_sos(20.0, 450.0, FS, 0), "order"),
        (lambda: bandpass_sos(20.0, 450.0, FS, 11), "order"),
        (lambda: bandpass_sos(20.0, 450.0, FS, 2.5), "order"),
        (lambda: highpass_sos(float("nan"), FS), "cutoff_hz"),
        (lambda: lowpass_sos(2000.0, FS), "cutoff_hz"),
        (lambda: lowpass_sos(10.0, FS, True), "order"),
        (lambda: notch_sos(0.0, FS), "freq_hz"),
        (lambda: notch_sos(-50.0, FS), "freq_hz"),
        (lambda: notch_sos(50.0, FS, quality=0.0), "quality"),
        (lambda: notch_sos(50.0, FS, up_to_hz=-1.0), "up_to_hz"),
        (lambda: notch_sos(50.0, FS, up_to_hz=40.0), "freq_hz"),
        (lambda: notch_sos(50.0, 0.0), "rate_hz"),
        (lambda: SOSFilter(np.zeros((2, 5)), 1), "sos"),
        (lambda: SOSFilter(np.array([[1, 0, 0, 2, 0, 0]]), 1), "sos"),
        (lambda: SOSFilter(lowpass_sos(10, FS), 0), "n_channels"),
        (lambda: SOSFilter(lowpass_sos(10, FS), 1, initial="steady"), "initial"),
        (lambda: Envelope(FS, 1, cutoff_hz=0.0), "cutoff_hz"),
        (lambda: Envelope(FS, 1, order=20), "order"),
        (lambda: Envelope(0.0, 1), "rate_hz"),
        (lambda: MovingRMS(FS, 1, 0.0), "window_s"),
        (lambda: MovingRMS(FS, 1, 1e-5), "window_s"),
        (lambda: MovingRMS(FS, -2, 0.1), "n_channels"),
        (lambda: FilterChain([]), "filters"),
        (lambda: FilterChain([object()]), "filters"),
    ],
)
def test_invalid_parameters_raise_config_error_naming_them(make, name):
    with pytest.raises(ConfigError, match=name):
        make()
