"""Recruitment curves: Boltzmann fit and its intervals, response windows, waveform tables, recordings, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from acquisition.files import FileFormatError
from closedloop.analysis.recruitment import (
    Sweeps,
    boltzmann,
    find_windows,
    fit_recruitment,
    level_summary,
    peak_to_peak,
    read_waveform_table,
    summarize_h_reflex,
    sweeps_from_recording,
    threshold_intensity,
    two_sigmoids,
)
from closedloop.errors import ConfigError
from closedloop.recording.xdf import XDFWriter

TRUTH = {"m_max": 1000.0, "i50": 10.0, "k": 1.5}


def _curve_data(seed: int, levels: np.ndarray | None = None, reps: int = 4, noise: float = 30.0):
    levels = np.arange(4.0, 18.5, 1.0) if levels is None else levels
    rng = np.random.default_rng(seed)
    x = np.repeat(levels, reps)
    return x, boltzmann(x, **TRUTH) + noise * rng.standard_normal(x.size)


def _within(value: float, ci: tuple[float, float]) -> bool:
    return ci[0] <= value <= ci[1]


# ---------------------------------------------------------------------------------------------- fit


def test_fit_recovers_known_parameters_within_their_intervals() -> None:
    x, y = _curve_data(1)
    fit = fit_recruitment(x, y)
    k_true = TRUTH["k"]
    truth = {
        "m_max": TRUTH["m_max"],
        "i50": TRUTH["i50"],
        "k": k_true,
        "slope": TRUTH["m_max"] / (4 * k_true),
        "threshold": TRUTH["i50"] - k_true * math.log(9.0),
    }
    for name, true in truth.items():
        est, ci = getattr(fit, name), getattr(fit, f"{name}_ci")
        assert _within(true, ci), f"{name}: truth {true} outside {ci}"
        assert est == pytest.approx(true, rel=0.06), name
        assert ci[0] < est < ci[1]
    assert fit.ci_method == "delta" and fit.n == x.size and fit.n_levels == 15
    assert fit.r2 > 0.99 and fit.rmse == pytest.approx(30.0, rel=0.25)
    assert fit.notes == ()


def test_threshold_is_where_the_fitted_curve_reaches_the_fraction() -> None:
    x, y = _curve_data(2)
    for f in (0.05, 0.1, 0.5, 0.9):
        fit = fit_recruitment(x, y, threshold_fraction=f)
        assert fit.threshold == pytest.approx(threshold_intensity(fit.i50, fit.k, f))
        assert float(fit.predict(fit.threshold)[()]) == pytest.approx(f * fit.m_max, rel=1e-9)
        assert fit.slope == pytest.approx(fit.m_max / (4 * fit.k))
    h = 1e-6  # the slope is the derivative at i50
    assert fit.slope == pytest.approx(float(np.diff(fit.predict([fit.i50 - h, fit.i50 + h]))[0]) / (2 * h), rel=1e-5)


def test_delta_interval_coverage_is_near_nominal() -> None:
    levels = np.arange(5.0, 16.0, 1.0)
    names = ("m_max", "i50", "k", "threshold", "slope")
    truth = (1000.0, 10.0, 1.5, 10.0 - 1.5 * math.log(9.0), 1000.0 / 6.0)
    hits = np.zeros(len(names))
    n = 100
    for seed in range(n):
        x, y = _curve_data(100 + seed, levels=levels, reps=2, noise=60.0)
        fit = fit_recruitment(x, y)
        hits += [_within(t, getattr(fit, f"{name}_ci")) for name, t in zip(names, truth, strict=True)]
    coverage = dict(zip(names, hits / n, strict=True))
    assert all(0.85 <= c <= 1.0 for c in coverage.values()), coverage


def test_bootstrap_intervals() -> None:
    x, y = _curve_data(3)
    delta = fit_recruitment(x, y)
    boot = fit_recruitment(x, y, n_boot=200, seed=1)
    assert boot.ci_method == "bootstrap-sweeps" and boot.n_boot == 200
    assert boot.m_max == delta.m_max  # same point estimates
    for name in ("m_max", "i50", "k", "slope", "threshold"):
        ci_b, ci_d = getattr(boot, f"{name}_ci"), getattr(delta, f"{name}_ci")
        assert ci_b[0] < getattr(boot, name) < ci_b[1]
        assert 0.4 < (ci_b[1] - ci_b[0]) / (ci_d[1] - ci_d[0]) < 2.5, name
    # one sweep per intensity: the sweeps are resampled together
    x1, y1 = _curve_data(4, reps=1)
    assert fit_recruitment(x1, y1, n_boot=50).ci_method == "bootstrap-pairs"


def test_as_dict_is_json_ready() -> None:
    x, y = _curve_data(5)
    d = fit_recruitment(x, y).as_dict()
    for key in ("m_max", "i50_ma", "k_ma", "slope_per_ma", "threshold_ma"):
        assert isinstance(d[key], float)
        lo, hi = d[f"{key}_ci"]
        assert lo < d[key] < hi
    assert json.loads(json.dumps(d, allow_nan=False)) == d


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        ([1, 1, 2, 2], [0.1, 0.2, 5.0, 5.2], "need at least 4 distinct intensities, got 2"),
        ([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], "the responses do not rise with intensity"),
        ([1, 2, 3, 4, 5, 6], [2, 2, 2, 2, 2, 2], "the responses are all equal"),
        ([1, 2, 3, 4, 5], [1, 2, float("nan"), 4, 5], "NaN or infinite"),
        ([1, 2, 3, 4], [1, 2, 3], "4 intensities for 3 responses"),
    ],
)
def test_fit_errors_are_clear(x, y, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fit_recruitment(x, y)


def test_fit_settings_are_checked() -> None:
    x, y = _curve_data(6)
    for kwargs in ({"threshold_fraction": 1.0}, {"confidence": 0.0}, {"n_boot": 5}):
        with pytest.raises(ConfigError):
            fit_recruitment(x, y, **kwargs)


def test_unsaturated_curve_is_noted() -> None:
    x, y = _curve_data(7, levels=np.arange(4.0, 10.5, 1.0))
    fit = fit_recruitment(x, y)
    assert any("m_max is extrapolated" in n for n in fit.notes)
    assert fit.m_max_ci[1] - fit.m_max_ci[0] > 100.0  # honest: wide


def test_step_between_two_intensities_leaves_k_undetermined() -> None:
    x = np.repeat(np.arange(1.0, 9.0), 3)
    y = np.where(x > 4.5, 100.0, 0.0) + np.random.default_rng(12).normal(0.0, 1.0, x.size)
    fit = fit_recruitment(x, y)
    assert 4.0 < fit.i50 < 5.0 and fit.m_max == pytest.approx(100.0, abs=2.0)
    assert any("k is not determined" in n for n in fit.notes)
    assert fit.i50_ci == fit.threshold_ci == (4.0, 5.0)  # anywhere between the two intensities
    assert fit.k_ci[0] == 0.0 and fit.k_ci[1] == pytest.approx(1.0 / (2 * math.log(19.0)))
    assert fit.slope_ci[1] == math.inf
    d = fit.as_dict()
    json.dumps(d, allow_nan=False)  # an infinite bound becomes null


# ------------------------------------------------------------------------------ H-reflex and levels


def test_h_reflex_summary_and_fit() -> None:
    rng = np.random.default_rng(8)
    x = np.repeat(np.arange(1.0, 12.5, 1.0), 3)
    truth = two_sigmoids(x, 3.0, 4.0, 0.6, 8.0, 0.8)
    h = truth + 0.05 * rng.standard_normal(x.size)
    s = summarize_h_reflex(x, h, m_max=6.0)
    grid = np.linspace(1, 12, 2001)
    true_curve = two_sigmoids(grid, 3.0, 4.0, 0.6, 8.0, 0.8)
    assert s.h_max_intensity == pytest.approx(grid[np.argmax(true_curve)], abs=1.0)
    assert s.h_max_over_m_max == pytest.approx(s.h_max / 6.0)
    assert s.fit is not None and s.fit.r2 > 0.98
    assert s.fit.h_max_fit == pytest.approx(true_curve.max(), rel=0.05)
    assert s.fit.i_h_max == pytest.approx(grid[np.argmax(true_curve)], abs=0.3)
    json.dumps(s.as_dict(), allow_nan=False)


def test_level_summary() -> None:
    rows = level_summary([1, 1, 2, 2, 3], [1.0, 3.0, 2.0, 2.0, 5.0], [0.5, 0.5, 1.0, 3.0, 0.0])
    assert [r["intensity_ma"] for r in rows] == [1.0, 2.0, 3.0]
    assert rows[0]["m_mean"] == 2.0 and rows[0]["m_sd"] == pytest.approx(math.sqrt(2.0))
    assert rows[1]["h_mean"] == 2.0 and rows[2]["n"] == 1 and rows[2]["m_sd"] is None


# ---------------------------------------------------------------------------------- waveform windows

RATE_HZ = 4000.0


def _template(t_ms: np.ndarray, start_ms: float, dur_ms: float) -> np.ndarray:
    """One sine period from ``start_ms`` lasting ``dur_ms``, scaled so its sampled peak-to-peak is 1."""
    u = (t_ms - start_ms) / dur_ms
    w = np.where((u >= 0) & (u <= 1), np.sin(2 * np.pi * u), 0.0)
    return w / np.ptp(w)


def _synthetic_sweeps(with_h: bool = True, noise: float = 2.0, seed: int = 9):
    """Sweeps with an M-wave (6-12 ms) and optionally an H-reflex (30-36 ms) of known peak-to-peak (uV)."""
    rng = np.random.default_rng(seed)
    t = np.arange(-2.0, 50.0, 1e3 / RATE_HZ)
    x = np.repeat(np.arange(2.0, 20.5, 2.0), 3)
    m = boltzmann(x, 800.0, 11.0, 1.5)
    h = two_sigmoids(x, 500.0, 5.0, 1.0, 12.0, 1.2) if with_h else np.zeros_like(x)
    w = m[:, None] * _template(t, 6.0, 6.0) + h[:, None] * _template(t, 30.0, 6.0)
    w += 3000.0 * np.exp(-np.clip(t, 0, None) / 0.3) * (t >= 0) * (x[:, None] / 20.0)  # stimulus artifact
    w += noise * rng.standard_normal(w.shape)
    return Sweeps(t, w, x, "uV", "synthetic"), m, h


def test_windows_and_peak_to_peak_on_synthetic_sweeps() -> None:
    sweeps, m_true, h_true = _synthetic_sweeps()
    win = find_windows(sweeps)
    assert win.m_auto and win.h_auto and win.blank_ms == 3.0
    assert 3.0 <= win.m_ms[0] <= 7.5 and 10.5 <= win.m_ms[1] <= 16.0  # the M extrema at 7.5 and 10.5 ms
    assert win.h_ms is not None and 25.0 <= win.h_ms[0] <= 31.5 and 34.5 <= win.h_ms[1] <= 40.0
    m = peak_to_peak(sweeps.time_ms, sweeps.waveforms, win.m_ms)
    h = peak_to_peak(sweeps.time_ms, sweeps.waveforms, win.h_ms)
    assert np.max(np.abs(m - m_true)) < 20.0  # noise sd 2 uV: ptp error a few sd at most
    assert np.max(np.abs(h - h_true)) < 20.0
    fit = fit_recruitment(sweeps.intensity_ma, m)
    assert fit.i50 == pytest.approx(11.0, abs=0.2) and fit.m_max == pytest.approx(800.0, rel=0.03)


def test_no_h_window_without_an_h_reflex() -> None:
    sweeps, _, _ = _synthetic_sweeps(with_h=False)
    win = find_windows(sweeps)
    assert win.h_ms is None and win.h_reason
    assert 3.0 <= win.m_ms[0] <= 7.5 and 10.5 <= win.m_ms[1] <= 16.0


def test_given_windows_are_used_and_checked() -> None:
    sweeps, _, _ = _synthetic_sweeps()
    win = find_windows(sweeps, m_window_ms=(5.0, 14.0), h_window_ms=(28.0, 38.0))
    assert (win.m_ms, win.h_ms, win.m_auto, win.h_auto) == ((5.0, 14.0), (28.0, 38.0), False, False)
    with pytest.raises(ConfigError, match="need start < end"):
        find_windows(sweeps, m_window_ms=(14.0, 5.0))
    with pytest.raises(ConfigError, match="holds 0 samples"):
        find_windows(sweeps, h_window_ms=(80.0, 90.0))


def test_no_response_is_an_error() -> None:
    rng = np.random.default_rng(10)
    t = np.arange(0.0, 40.0, 0.25)
    sweeps = Sweeps(t, rng.standard_normal((20, t.size)), np.repeat(np.arange(1.0, 6.0), 4), "uV", "noise")
    with pytest.raises(ConfigError, match="no evoked response stands out"):
        find_windows(sweeps)


# -------------------------------------------------------------------------------------- tables


def _message(path: Path) -> str:
    with pytest.raises(FileFormatError) as err:
        read_waveform_table(path)
    msg = str(err.value)
    assert "\n" not in msg and path.name in msg
    return msg


def test_waveform_table_round_trip(tmp_path: Path) -> None:
    sweeps, _, _ = _synthetic_sweeps()
    table = np.vstack([np.r_[0.0, sweeps.intensity_ma], np.column_stack([sweeps.time_ms, sweeps.waveforms.T])])
    path = tmp_path / "w.csv"
    np.savetxt(path, table, delimiter=",")
    got = read_waveform_table(path)
    np.testing.assert_allclose(got.time_ms, sweeps.time_ms)
    np.testing.assert_allclose(got.waveforms, sweeps.waveforms)
    np.testing.assert_allclose(got.intensity_ma, sweeps.intensity_ma)
    assert got.unit == "table units" and got.n_sweeps == sweeps.n_sweeps


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0,1,2\n0,0.1,0.2\n1,0.3\n", "ragged table: row 3 has 2 values, row 1 has 3"),
        ("0,1,2\n0,0.1,abc\n1,0.3,0.4\n", "row 2, column 3: 'abc' is not a number"),
        ("0\n0\n1\n2\n", "no sweeps"),
        ("0,1,2\n0,0.1,0.2\n1,0.3,0.4\n1,0.3,0.4\n", "does not increase: row 4 is 1 ms after 1 ms in row 3"),
        ("0,1,2\n0,0.1,0.2\n1,0.3,nan\n", "row 3, column 3: nan (values must be finite)"),
        ("0,1,2\n0,0.1,0.2\n", "1 samples per sweep"),
        ("\n\n", "the file is empty"),
    ],
)
def test_malformed_tables(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert problem in _message(path)


def test_missing_table(tmp_path: Path) -> None:
    assert "no such file" in _message(tmp_path / "absent.csv")


# -------------------------------------------------------------------------------- the real file


def _real_table() -> Path:
    env = os.environ.get("CLOSEDLOOP_DATA")
    here = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    folder = here if here.is_dir() or not env else Path(env)
    path = folder / "rcf_example-waveforms.csv"
    if not path.is_file():
        pytest.skip(f"rcf_example-waveforms.csv not found in {folder} (set CLOSEDLOOP_DATA to its folder)")
    return path


def test_real_waveform_table() -> None:
    sweeps = read_waveform_table(_real_table())
    assert sweeps.waveforms.shape == (41, 193) and sweeps.intensity_ma.min() == 1.5
    win = find_windows(sweeps)
    assert 5.0 < win.m_ms[0] < win.m_ms[1] < 20.0  # the M-wave, ~8-16 ms
    assert win.h_ms is not None and 30.0 < win.h_ms[0] < win.h_ms[1] < 46.0  # the H-reflex, ~35-42 ms
    m = peak_to_peak(sweeps.time_ms, sweeps.waveforms, win.m_ms)
    h = peak_to_peak(sweeps.time_ms, sweeps.waveforms, win.h_ms)
    fit = fit_recruitment(sweeps.intensity_ma, m)
    assert 0.9 * m.max() <= fit.m_max <= 1.1 * m.max()
    assert sweeps.intensity_ma.min() < fit.threshold < fit.i50 < sweeps.intensity_ma.max()
    s = summarize_h_reflex(sweeps.intensity_ma, h, fit.m_max)
    assert 3.0 <= s.h_max_intensity <= 4.5 and 0.3 < s.h_max_over_m_max < 1.0


# ---------------------------------------------------------------------------------- recordings

XDF_RATE = 2048.0
XDF_TRUTH = {"m_max": 2000.0, "i50": 12.0, "k": 2.0}


def _write_session(path: Path, with_amplitudes: bool = True, channels=("EMG1",), seed: int = 11) -> np.ndarray:
    """A session.xdf with an M-wave (4-12 ms) and an artifact after each pulse, 0.4 s apart; returns the amps."""
    rng = np.random.default_rng(seed)
    levels = np.arange(4.0, 21.0, 2.0)
    a = rng.permutation(np.repeat(levels, 3))
    n = round(XDF_RATE * (0.5 + 0.4 * a.size))
    pulse_k = round(0.25 * XDF_RATE) + np.round(np.arange(a.size) * 0.4 * XDF_RATE).astype(int)
    t_ms = np.arange(round(0.03 * XDF_RATE)) * 1e3 / XDF_RATE
    wave = _template(t_ms, 4.0, 8.0)
    art = np.exp(-t_ms / 0.3)
    uv = 10.0 * rng.standard_normal(n)
    idx = pulse_k[:, None] + np.arange(t_ms.size)
    np.add.at(uv, idx, boltzmann(a, **XDF_TRUTH)[:, None] * wave + 150.0 * a[:, None] * art)
    ts = 500.0 + np.arange(n) / XDF_RATE
    with XDFWriter(path) as w:
        emg = w.add_stream("EMG", "EMG", channels, ["microvolts"], XDF_RATE, "float32")
        w.write_samples(emg, np.repeat(uv[:, None], len(channels), axis=1), ts)
        if not with_amplitudes:
            mk = w.add_stream("Events", "Markers", ["label"], [""], 0.0, "string")
            w.write_samples(mk, [["stim"]] * a.size, ts[pulse_k])
        else:
            p = w.add_stream("Pulses", "Pulses", ("channel", "amplitude_ma"), ("index", "mA"), 0.0, "double64")
            w.write_samples(p, np.column_stack([np.zeros(a.size), a]), ts[pulse_k])
    return a


def test_recording_sweeps_recover_the_curve(tmp_path: Path) -> None:
    path = tmp_path / "session.xdf"
    amps = _write_session(path)
    sweeps = sweeps_from_recording(path)
    assert sweeps.n_sweeps == amps.size and sweeps.unit == "uV" and sweeps.channel == "EMG1"
    np.testing.assert_array_equal(sweeps.intensity_ma, amps)
    assert sweeps.time_ms[0] == pytest.approx(-5.0, abs=1e3 / XDF_RATE)
    win = find_windows(sweeps)
    assert 3.0 <= win.m_ms[0] <= 6.0 and 10.0 <= win.m_ms[1] <= 16.0 and win.h_ms is None
    m = peak_to_peak(sweeps.time_ms, sweeps.waveforms, win.m_ms)
    fit = fit_recruitment(sweeps.intensity_ma, m)
    for name, true in (("m_max", 2000.0), ("i50", 12.0), ("k", 2.0)):
        assert _within(true, getattr(fit, f"{name}_ci")), name
        assert getattr(fit, name) == pytest.approx(true, rel=0.05), name


def test_recording_errors(tmp_path: Path) -> None:
    markers = tmp_path / "markers.xdf"
    _write_session(markers, with_amplitudes=False)
    with pytest.raises(FileFormatError, match="recruitment needs the intensity of each pulse"):
        sweeps_from_recording(markers)
    multi = tmp_path / "multi.xdf"
    _write_session(multi, channels=("EMG1", "EMG2"))
    with pytest.raises(ConfigError, match=r"2 EMG channels \(EMG1, EMG2\): choose one with --channel"):
        sweeps_from_recording(multi)
    assert sweeps_from_recording(multi, "EMG2").channel == "EMG2"
    short = sweeps_from_recording(multi, "EMG1", window_ms=(-5.0, 500.0))
    assert short.time_ms[-1] <= 400.0 and any("shortest interval" in n for n in short.notes)


# ------------------------------------------------------------------------------------------ CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "closedloop", "analyze", "recruitment", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_json_csv_png(tmp_path: Path) -> None:
    sweeps, m_true, _ = _synthetic_sweeps()
    table = np.vstack([np.r_[0.0, sweeps.intensity_ma], np.column_stack([sweeps.time_ms, sweeps.waveforms.T])])
    path = tmp_path / "sweeps.csv"
    np.savetxt(path, table, delimiter=",")
    out = tmp_path / "out"
    r = _cli(str(path), "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("recruitment.json", "recruitment.csv", "recruitment.png"):
        assert (out / name).stat().st_size > 0 and str(out / name) in r.stdout
    res = json.loads((out / "recruitment.json").read_text())
    assert res["m_wave"]["i50_ma"] == pytest.approx(11.0, abs=0.3)
    assert res["h_reflex"] is not None and res["windows"]["h_window_ms"] is not None
    rows = np.loadtxt(out / "recruitment.csv", delimiter=",", skiprows=1)
    assert rows.shape == (sweeps.n_sweeps, 4)
    np.testing.assert_allclose(rows[:, 2], m_true, atol=20.0)
    assert "I50" in r.stdout and "mA" in r.stdout


def test_cli_bad_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1,2\n0,0.1,oops\n")
    r = _cli(str(bad), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("closedloop analyze: error: ") and "bad.csv" in r.stderr
