"""Artifact blanking and pulse detection from artifacts: known answers, the simulated muscle, real tSCS data."""

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition.simulator.muscle import MuscleParams, VirtualMuscle
from closedloop.errors import ConfigError
from closedloop.estimation.artifacts import ArtifactDetector, blank_linear, detect_pulses

RATE = 2048.0
N_CH = 4


def _data_dir() -> Path:
    """``../shared/data`` from the repository root, else ``$CLOSEDLOOP_DATA``."""
    here = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if here.is_dir() or not os.environ.get("CLOSEDLOOP_DATA"):
        return here
    return Path(os.environ["CLOSEDLOOP_DATA"])


def _load_mat(name: str, key: str) -> np.ndarray:
    path = _data_dir() / name
    if not path.is_file():
        pytest.skip(f"real recording {name} not found in {path.parent} (set CLOSEDLOOP_DATA to its folder)")
    sio = pytest.importorskip("scipy.io")
    m = sio.loadmat(path)
    assert int(np.asarray(m["Fs"]).item()) == 4000
    return np.asarray(m[key], dtype=np.float64).reshape(-1, 1)


def _chunks(x: np.ndarray, sizes: list[int]):
    """Consecutive chunks of ``x`` with the sizes cycled; yields (start, chunk)."""
    pos, k = 0, 0
    while pos < x.shape[0]:
        n = sizes[k % len(sizes)]
        yield pos, x[pos : pos + n]
        pos += n
        k += 1


# ---------------------------------------------------------------------------------------------- simulated data


@functools.cache
def _stimulated(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """20 s, 4 channels, drive 0.3, pulses every 1/30 s +- 3 ms jitter at 20 mA / 300 us: (emg, true indices)."""
    muscle = VirtualMuscle(MuscleParams(n_channels=N_CH, rate_hz=RATE, seed=seed))
    rng = np.random.default_rng(seed)
    for k in range(600):
        muscle.schedule_pulse(0.01 + k / 30.0 + rng.uniform(-0.003, 0.003), 0, 20.0, 300.0)
    block = muscle.generate(round(20 * RATE), 0.3)
    truth = np.array([p.sample_index for p in block.pulses], dtype=np.int64)
    assert truth.size == 600
    block.emg.setflags(write=False)
    return block.emg, truth


def _pairs(gap_s: float, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 s with a pair of pulses every 100 ms, ``gap_s`` apart: (emg, first indices, second indices)."""
    muscle = VirtualMuscle(MuscleParams(n_channels=N_CH, rate_hz=RATE, seed=seed))
    for k in range(30):
        t = 0.05 + 0.1 * k
        muscle.schedule_pulse(t, 0, 20.0, 300.0)
        muscle.schedule_pulse(t + gap_s, 0, 20.0, 300.0)
    block = muscle.generate(round(3 * RATE), 0.3)
    idx = np.array([p.sample_index for p in block.pulses], dtype=np.int64)
    return block.emg, idx[0::2], idx[1::2]


@pytest.mark.parametrize("order", [2, 1])
def test_simulated_pulses_are_found_at_their_exact_sample(order):
    emg, truth = _stimulated()
    np.testing.assert_array_equal(detect_pulses(emg, RATE, order=order), truth)


def test_one_channel_is_enough():
    emg, truth = _stimulated()
    np.testing.assert_array_equal(detect_pulses(emg, RATE, channels=[3]), truth)  # smallest gain, inverted


@settings(max_examples=6, deadline=None)
@given(sizes=st.lists(st.one_of(st.integers(1, 40), st.integers(41, 5000)), min_size=1, max_size=6))
def test_detection_does_not_depend_on_chunking(sizes):
    emg, truth = _stimulated()
    det = ArtifactDetector(RATE, N_CH)
    warm_end = 2 + round(RATE)  # order + warm-up samples: the threshold is known after this sample
    found = []
    for start, chunk in _chunks(emg, sizes):
        got = det.step(chunk)
        assert got.dtype == np.int64
        assert np.all(got < start + chunk.shape[0])
        if start >= warm_end:
            assert np.all(got >= start)  # no look-ahead: a pulse comes with the chunk that holds it
        found.append(got)
    found.append(det.flush())
    np.testing.assert_array_equal(np.concatenate(found), truth)


@pytest.mark.parametrize("drive", [0.5, 1.0])
def test_no_detection_without_pulses(drive):
    muscle = VirtualMuscle(MuscleParams(n_channels=N_CH, rate_hz=RATE, seed=11))
    emg = muscle.generate(round(10 * RATE), drive).emg
    det = ArtifactDetector(RATE, N_CH)
    assert det.step(emg).size == 0
    assert det.flush().size == 0
    assert det.threshold_ is not None and (det.threshold_ > 0).all()


def test_without_the_sharpness_test_m_waves_count_as_pulses():
    """Why the sharpness test exists: the M-wave after each 20 mA pulse is steeper than k_mad=8 thresholds."""
    emg, truth = _stimulated()
    for order in (1, 2):
        found = detect_pulses(emg, RATE, order=order, sharpness=None)
        assert np.isin(truth, found).all()
        assert found.size > truth.size + 20


@pytest.mark.parametrize("gap_s", [0.001, 0.002, 0.004])
def test_pulses_closer_than_min_interval_merge_into_one_detection_at_the_first(gap_s):
    emg, first, second = _pairs(gap_s)
    assert np.all(second - first < 0.005 * RATE)
    np.testing.assert_array_equal(detect_pulses(emg, RATE), first)


def test_pulses_further_apart_are_both_found_unless_min_interval_covers_them():
    emg, first, second = _pairs(0.008)
    np.testing.assert_array_equal(detect_pulses(emg, RATE), np.sort(np.r_[first, second]))
    np.testing.assert_array_equal(detect_pulses(emg, RATE, min_interval_s=0.010), first)


def test_recording_shorter_than_warmup_is_searched_on_flush():
    emg, truth = _stimulated()
    n = round(0.5 * RATE)
    det = ArtifactDetector(RATE, N_CH)
    assert det.step(emg[:n]).size == 0 and det.threshold_ is None
    np.testing.assert_array_equal(det.flush(), truth[truth < n])
    assert det.threshold_ is not None


def test_reset_starts_over():
    emg, truth = _stimulated()
    det = ArtifactDetector(RATE, N_CH)
    first = np.concatenate((det.step(emg[:30000]), det.flush()))
    det.reset()
    assert det.threshold_ is None
    again = np.concatenate((det.step(emg[:30000]), det.flush()))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, truth[truth < 30000])


def test_non_finite_samples_are_never_detected_and_do_not_disturb_the_rest():
    emg, truth = _stimulated()
    x = np.array(emg, dtype=np.float64)
    holes = truth[100:110] + round(0.010 * RATE)  # 10 ms after a pulse, > 20 ms before the next
    for h in holes:
        x[h : h + 5, 1] = np.nan
    x[holes[0] + 2, 2] = np.inf
    np.testing.assert_array_equal(detect_pulses(x, RATE), truth)


def test_fixed_threshold_needs_no_warmup():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (1000, 2))
    steps = np.array([100, 400, 403, 700])  # 403 is 3 ms after 400: inside the 5 ms refractory period
    for s in steps:
        x[s:, 0] += 50.0
    det = ArtifactDetector(1000.0, 2, threshold=30.0)
    np.testing.assert_array_equal(det.threshold_, [30.0, 30.0])
    np.testing.assert_array_equal(det.step(x[:150]), [100])
    np.testing.assert_array_equal(det.step(x[150:]), [400, 700])
    assert det.flush().size == 0


def test_adaptive_threshold_is_robust_to_a_fifth_of_the_samples_being_artifact():
    rng = np.random.default_rng(1)
    clean = rng.normal(0.0, 10.0, (20000, 1))
    dirty = clean.copy()
    dirty[::15, 0] += 1e4  # each spike makes 3 samples of the second difference huge: 20 %
    thresholds = []
    for x in (clean, dirty):
        det = ArtifactDetector(1000.0, 1, warmup_s=20.0)
        det.step(x)
        det.flush()
        thresholds.append(det.threshold_)
    # Gaussian white noise: s = |second difference| is half-normal with sigma = sqrt(6) * 10
    sigma = np.sqrt(6.0) * 10.0
    assert 2.5 * sigma < thresholds[0] < 6 * sigma
    assert thresholds[0] < thresholds[1] < 1.6 * thresholds[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 10.0, "k_mad": 5.0},
        {"threshold": -1.0},
        {"k_mad": 0.0},
        {"order": 3},
        {"sharpness": 0.5},
        {"channels": [4]},
        {"channels": [0, 0]},
        {"channels": []},
        {"min_interval_s": -0.001},
        {"warmup_s": 0.0},
        {"lookback_s": float("nan")},
    ],
)
def test_invalid_configuration_is_refused(kwargs):
    with pytest.raises(ConfigError):
        ArtifactDetector(RATE, N_CH, **kwargs)


def test_wrong_chunk_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        ArtifactDetector(RATE, N_CH).step(np.zeros((10, 3)))


# ---------------------------------------------------------------------------------------------- blank_linear


def test_blank_linear_reproduces_a_ramp():
    n = np.arange(30, dtype=np.float64)
    x = np.stack([2.5 * n - 7.0, -0.125 * n], axis=1)
    y = x.copy()
    blank_linear(y, [3, 12, 20], 5)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-12)


def test_blank_linear_removes_a_spike():
    x = np.full((20, 2), 3.0)
    x[:, 1] = -1.0
    x[8] = [500.0, -400.0]
    x[9] = [-200.0, 100.0]
    blank_linear(x, [7], 4)
    np.testing.assert_array_equal(x[:, 0], 3.0)
    np.testing.assert_array_equal(x[:, 1], -1.0)


def test_blank_linear_window_at_the_start_uses_before():
    x = np.arange(10, dtype=np.float64)[:, None] * 1.0 + 100.0
    x[:3] = 9999.0
    y = x.copy()
    blank_linear(y, [0], 3, before=np.array([99.0]))  # line from 99 (index -1) to 103 (index 3)
    np.testing.assert_allclose(y[:3, 0], [100.0, 101.0, 102.0])
    z = x.copy()
    blank_linear(z, [0], 3)  # without `before`: held at the first sample after the window
    np.testing.assert_array_equal(z[:3, 0], 103.0)
    np.testing.assert_array_equal(z[3:], x[3:])


def test_blank_linear_window_at_the_end_holds():
    x = np.arange(10, dtype=np.float64)[:, None] * np.array([[1.0, -2.0]])
    blank_linear(x, [7], 5)
    np.testing.assert_array_equal(x[7:], np.tile(x[6], (3, 1)))
    np.testing.assert_array_equal(x[:7, 0], np.arange(7.0))


def test_blank_linear_merges_overlapping_and_adjacent_windows():
    x = np.zeros((20, 1))
    x[:, 0] = np.where(np.arange(20) < 10, 0.0, 14.0)
    x[4:12, 0] = 1000.0  # artifact spanning several windows; each window alone would bridge to it
    blank_linear(x, [4, 6, 8, 10], 2)  # adjacent: one window 4..11
    np.testing.assert_allclose(x[3:13, 0], np.linspace(0.0, 14.0, 10))
    y = np.full((12, 1), 5.0)
    y[2:7] = -50.0
    blank_linear(y, [2, 3, 4], 3)  # overlapping: one window 2..6
    np.testing.assert_array_equal(y[:, 0], 5.0)


def test_blank_linear_edge_cases():
    x = np.arange(8, dtype=np.float32)[:, None]
    y = x.copy()
    blank_linear(y, [], 3)
    blank_linear(y, [2], 0)
    blank_linear(y, [8, 20], 3)  # at or after the end: ignored
    np.testing.assert_array_equal(y, x)
    blank_linear(y, [-2], 4)  # window -2..1: its part inside x, 0..1, held at x[2] (no `before`)
    np.testing.assert_array_equal(y[:2, 0], [2.0, 2.0])
    z = np.ones((4, 2))
    blank_linear(z, [0], 10)  # everything, nothing to anchor to
    np.testing.assert_array_equal(z, 0.0)
    with pytest.raises(ValueError):
        blank_linear(np.zeros(5), [1], 2)


# ---------------------------------------------------------------------------------------------- real data


def test_real_tscs_recording_gives_a_30_hz_train():
    """tSCS at ~30 Hz (4000 Hz, 148.8 s, stimulation from 18.6 s on).

    Found with the defaults: threshold 31.3, 3904 pulses, median interval 133 samples (30.08 Hz), all
    3903 intervals within 10 % of the median. Asserted with some margin.
    """
    x = _load_mat("tscs_SingleCh_StimON.mat", "raw_on")
    rate = 4000.0
    found = detect_pulses(x, rate)
    ipi = np.diff(found)
    median = float(np.median(ipi))
    assert abs(rate / median - 30.0) <= 0.05 * 30.0
    consistent = np.mean(np.abs(ipi - median) <= 0.1 * median)
    assert consistent >= 0.99, f"only {consistent:.3%} of the intervals within 10 % of the median"
    # no pulse missed: as many detections as the stimulated span holds intervals, to 1 %
    expected = (found[-1] - found[0]) / median + 1
    assert abs(found.size - expected) <= 0.01 * expected
    assert found[0] > 18 * rate  # nothing during the unstimulated first 18 s
    # and the same in a live-like run with irregular chunks
    det = ArtifactDetector(rate, 1)
    sizes = np.random.default_rng(5).integers(1, 3000, 1000).tolist()
    chunked = [det.step(c) for _, c in _chunks(x, sizes)] + [det.flush()]
    np.testing.assert_array_equal(np.concatenate(chunked), found)


def test_real_recording_without_stimulation_gives_almost_no_detections():
    """The same channel without stimulation (78.2 s, five strong contractions): 0 detections found.

    Bound: 2, i.e. 0.1 % of the 2345 pulses a 30 Hz train would give in this time. A per-pulse
    estimator fed that many spurious pulses changes its averages by far less than their own noise.
    """
    x = _load_mat("tscs_SingleCh_StimOFF.mat", "raw_off")
    rate = 4000.0
    found = detect_pulses(x, rate)
    bound = int(0.001 * 30.0 * x.shape[0] / rate)
    assert bound == 2
    assert found.size <= bound, f"{found.size} detections at {found / rate} s"


def test_only_steady_pulse_trains_count_as_stimulation():
    from closedloop.estimation.artifacts import is_pulse_train

    fs = 2000.0
    train = np.arange(50) * 67  # ~30 Hz
    assert is_pulse_train(train, fs)
    # intermittent stimulation: trains of 20 pulses separated by 1-s pauses
    bursts = np.concatenate([k * 4000 + np.arange(20) * 100 for k in range(5)])
    assert is_pulse_train(bursts, fs)
    jitter = train + np.random.default_rng(0).integers(-2, 3, train.size)  # a few samples of jitter
    assert is_pulse_train(jitter, fs)
    irregular = np.sort(np.random.default_rng(1).integers(0, 60000, 31))  # motor-unit potentials
    assert not is_pulse_train(irregular, fs)
    assert not is_pulse_train(train[:5], fs)  # too few
    assert not is_pulse_train(np.arange(50) * 5, fs)  # 400 Hz: no stimulator pulses that fast


def test_an_artifact_on_one_quiet_channel_is_found_among_loud_ones():
    """HD-EMG: the artifact shows on the channel nearest the stimulation electrodes only, the others carry loud
    EMG whose sample-to-sample jumps are larger than that artifact. Each channel against its own threshold: every
    pulse found, nothing else; without stimulation nothing."""
    rate = 2048.0
    rng = np.random.default_rng(4)
    n = round(20 * rate)
    x = rng.normal(0.0, 300.0, (n, 8))  # seven loud channels (white: the steepest EMG there is)
    x[:, 5] = rng.normal(0.0, 5.0, n)  # the quiet one
    truth = np.arange(round(0.3 * rate), n - 100, round(rate / 30))
    quiet = x.copy()
    for p in truth:
        x[p : p + 20, 5] += 400.0 * np.exp(-np.arange(20) / 4.0)  # a 400-uV artifact: below the loud jumps
    assert np.abs(np.diff(x[:, [0]], 2, axis=0)).max() > 400.0
    np.testing.assert_array_equal(detect_pulses(x, rate), truth)
    assert detect_pulses(quiet, rate).size == 0


def test_an_artifact_near_the_threshold_on_one_of_64_channels_is_judged_against_its_own_background():
    """A 2-mV, two-sample artifact on 50-uV noise (40 x the noise) on one channel of 64: its sharpness was
    measured against the largest background of all 64 channels, whose noise peaks then hid 72 % of the pulses.
    Against its own channel's background: at most 2 % missed, and no detection without stimulation."""
    rate = 2048.0
    rng = np.random.default_rng(0)
    n = round(30 * rate)
    truth = np.arange(round(0.1 * rate), n - 100, 81)
    x = rng.standard_normal((n, 64)) * 50.0
    quiet = x.copy()
    x[truth, 0] += 2000.0
    x[truth + 1, 0] += 2000.0
    found = detect_pulses(x, rate)
    missed = ~(np.isin(truth, found) | np.isin(truth + 1, found))
    assert missed.mean() <= 0.02, missed.mean()
    assert np.setdiff1d(found, np.concatenate((truth, truth + 1))).size == 0  # nothing else
    assert detect_pulses(quiet, rate).size == 0


@settings(max_examples=60, deadline=None)
@given(
    order=st.sampled_from([1, 2]),
    chunks=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    dtype=st.sampled_from(["float64", "float32", "int16"]),
    seed=st.integers(0, 2**31),
)
def test_chunked_differences_are_numpys_differences_of_the_whole(order, chunks, dtype, seed):
    """The detector's differences, chunk by chunk through its reused buffers, are np.diff of the whole signal
    (the watched channels only; NaN where a difference is not finite; 0 before the first defined one)."""
    from closedloop.estimation.artifacts import ArtifactDetector

    rng = np.random.default_rng(seed)
    n = sum(chunks)
    x = (rng.standard_normal((n, 4)) * 1000).astype(dtype)
    if dtype != "int16" and n > 3:
        x[rng.integers(n), rng.integers(4)] = np.inf
        x[rng.integers(n), rng.integers(4)] = np.nan
    det = ArtifactDetector(2048.0, 4, channels=[0, 2, 3], order=order)
    starts = np.cumsum([0, *chunks[:-1]])
    got = np.concatenate([det._differences(x[a : a + k])[0] for a, k in zip(starts, chunks, strict=True)])
    with np.errstate(invalid="ignore", over="ignore"):
        ref = np.abs(np.diff(x[:, [0, 2, 3]].astype(np.float64), order, axis=0))
    ref[~np.isfinite(ref)] = np.nan
    expected = np.concatenate([np.zeros((min(order, n), 3)), ref])[:n]
    assert np.array_equal(got, expected, equal_nan=True)
