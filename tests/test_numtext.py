"""Vectorised number formatting (estimates.csv): byte for byte what Python's ``%`` writes."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from closedloop.recording import numtext
from closedloop.recording.session import ESTIMATES_CSV_COLUMNS, SessionRecorder
from closedloop.types import Estimate


def _texts(field: np.ndarray) -> list[str]:
    n = field.shape[1]
    return numtext.join_fields([field, numtext.constant_field("\n", n)]).decode().split("\n")[:-1]


def _python(x: np.ndarray, fmt: str) -> list[str]:
    return ["" if not np.isfinite(v) else fmt % v for v in x.tolist()]


EDGES = np.array(
    [
        0.0,
        -0.0,
        0.5,
        1.0,
        123456.5,  # an exact tie at the 7th digit: to even
        123457.5,
        1234565.0,
        9.999995,
        99999.95,
        999999.5,
        9999995.0,
        1e-4,
        9.999995e-5,
        1e-5,
        999999.0,
        1e6,
        1e16,
        1e22,
        1e23,
        1e100,
        -1e-100,
        1e-300,
        5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        2.675,
        np.nan,
        np.inf,
        -np.inf,
    ]
)


@pytest.mark.parametrize("precision", [0, 1, 3, 6, 7, 10])
def test_edges_and_random_numbers_are_formatted_as_python_does(precision):
    rng = np.random.default_rng(precision)
    x = np.concatenate(
        (
            EDGES,
            np.nextafter(10.0 ** np.arange(-8, 9), 0),
            10.0 ** np.arange(-8, 9),
            rng.standard_normal(20000) * 10.0 ** rng.integers(-12, 12, 20000),
            rng.integers(-(10**7), 10**7, 5000) / 10.0 ** rng.integers(0, 9, 5000),  # short decimals, ties
            np.arange(-5000, 5000) / 2048 * 1e3,  # sample periods in ms: exact binary fractions, many true ties
            np.arange(1, 5000) * 2.0 ** rng.integers(-40, 40, 4999),
            (np.arange(1, 5000) + 0.5) * 10.0 ** rng.integers(-3, 3, 4999),
            np.exp(rng.uniform(-700, 700, 5000)),
        )
    )
    assert _texts(numtext.format_g(x, precision)) == _python(x, f"%.{precision}g")
    assert _texts(numtext.format_e(x, precision)) == _python(x, f"%.{precision}e")


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_any_float64_is_formatted_as_python_does(x):
    assert _texts(numtext.format_g(x)) == _python(x, "%.6g")
    assert _texts(numtext.format_e(x)) == _python(x, "%.6e")


def _usual_range(rng, n: int, nd: int) -> list[np.ndarray]:
    """Blocks of numbers whose rounding to ``nd`` digits takes one exact multiplication (``10**(nd-23) <= |x|
    < 10**nd``, with zeros and non-finite ones set aside): random ones, short decimals, exact ties (sample
    periods in ms, halves), ones rounded up to a power of ten; in the last block numbers next to powers of
    ten (log10 may be one off there)."""
    lo = nd - 22
    blocks = [
        rng.standard_normal(n) * 10.0 ** rng.integers(lo, nd - 1, n),
        rng.integers(-(10**7), 10**7, n) / 10.0 ** rng.integers(max(0, 7 - nd), 9, n),
        np.arange(1, n) / 2048 * 10.0 ** (nd - 3),
        (np.arange(1, n) + 0.5) * 10.0 ** rng.integers(-4, nd - 3, n - 1),
        np.arange(1, n) * 2.0 ** rng.integers(-40, 3 * nd - 12, n - 1),
        (1.0 - rng.uniform(0, 0.5, n) * 10.0**-nd) * 10.0 ** rng.integers(lo + 1, nd + 1, n),  # 9.9999996 -> 10
        np.concatenate(
            (
                np.nextafter(10.0 ** np.arange(lo + 1, nd), 0),
                np.nextafter(10.0 ** np.arange(lo, nd), np.inf),
                10.0 ** np.arange(lo, nd),
                [10.0**nd - 0.5, 10.0**nd - 0.51],
            )
        ),
    ]
    blocks = [x[(np.abs(x) >= 10.0**lo) & (np.abs(x) < 10.0**nd)] for x in blocks]
    return [np.concatenate((x, -x[:100], [0.0, -0.0, np.nan, np.inf])) for x in blocks]


@pytest.mark.parametrize("precision", [1, 3, 6, 7])
def test_numbers_rounded_with_one_multiplication_are_formatted_as_python_does(precision, monkeypatch):
    """The usual case, every power of ten exact and k >= 0, has a shorter path; it gives what % gives."""
    rng = np.random.default_rng(precision)
    g_blocks, e_blocks = _usual_range(rng, 4000, precision), _usual_range(rng, 4000, precision + 1)
    near_powers = g_blocks.pop(), e_blocks.pop()
    assert _texts(numtext.format_g(near_powers[0], precision)) == _python(near_powers[0], f"%.{precision}g")
    assert _texts(numtext.format_e(near_powers[1], precision)) == _python(near_powers[1], f"%.{precision}e")
    monkeypatch.setattr(numtext, "_significant_digits_general", None)  # the other blocks take the short path
    for x in g_blocks:
        assert _texts(numtext.format_g(x, precision)) == _python(x, f"%.{precision}g")
    for x in e_blocks:
        assert _texts(numtext.format_e(x, precision)) == _python(x, f"%.{precision}e")


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.integers(1, 50),
        elements=st.floats(1e-16, 999999.0)
        | st.floats(-999999.0, -1e-16)
        | st.integers(-(2**30), 2**30).map(lambda i: i / 1024),
    )
)
def test_any_float64_in_the_usual_range_is_formatted_as_python_does(x):
    assert _texts(numtext.format_g(x)) == _python(x, "%.6g")
    assert _texts(numtext.format_e(x)) == _python(x, "%.6e")


def _estimate(rng, k: int, n_ch: int) -> Estimate:
    def col(scale: float) -> np.ndarray:
        v = rng.standard_normal(n_ch) * scale
        v[rng.random(n_ch) < 0.2] = np.nan
        v[rng.random(n_ch) < 0.05] = rng.choice([0.0, -0.0, np.inf, -np.inf, 1e-7, 2e6])
        return v

    return Estimate(
        index=k,
        t_start=100.0 + k * 0.04,
        t_end=100.0 + (k + 1) * 0.04,
        amplitude_ma=float(rng.choice([np.nan, 0.0, 12.5, 33.0])),
        effort_uv=1.0,
        effort_smooth_uv=1.0,
        effort_pct_mvc=np.nan,
        mwave_ptp_uv=np.nan,
        channel_effort_uv=col(100.0),
        channel_mwave_ptp_uv=col(3000.0),
        channel_mwave_area_uvs=col(50.0),
        channel_mwave_latency_s=col(0.01),
        channel_effort_pct_mvc=col(30.0),
        channel_mwave_ptp_rel=col(1.0),
        channel_mwave_area_rel=col(1.0),
        channel_mdf_hz=col(80.0),
        channel_mnf_hz=col(90.0),
        channel_fi_nsm5=col(1e-12),
    )


def test_csv_rows_of_a_batch_equal_the_row_by_row_formatting(tmp_path):
    names = ("EMG1", "biceps, long head", 'say "hi"', "nancy", "inf", "-infra", "100%", "Ünicode")
    rec = SessionRecorder(tmp_path, threaded=False, t_zero=99.0)
    rec.set_estimate_channels(names)
    rng = np.random.default_rng(3)
    ests = [_estimate(rng, k, len(names)) for k in range(40)]
    assert rec._rows(ests) == "".join(rec._rows_by_row(e) for e in ests).encode()
    assert rec._rows(ests[:1]) == rec._rows_by_row(ests[0]).encode()
    # no MVC, no pulses: whole columns without a number
    blank = [
        dataclasses.replace(e, amplitude_ma=np.nan, channel_effort_pct_mvc=np.full(len(names), np.nan)) for e in ests
    ]
    assert rec._rows(blank) == "".join(rec._rows_by_row(e) for e in blank).encode()


@pytest.mark.parametrize("threaded", [False, True])
def test_estimates_csv_file_holds_the_row_by_row_bytes(tmp_path, threaded):
    """Through the recorder (batches handed over, the file written as bytes): header and rows as ``%`` writes them."""
    names = ("EMG1", "biceps, long head", "Ünicode")
    rec = SessionRecorder(tmp_path, threaded=threaded, t_zero=99.0)
    rec.set_estimate_channels(names)
    rng = np.random.default_rng(5)
    ests = [_estimate(rng, k, len(names)) for k in range(300)]
    rec.start()
    for k, est in enumerate(ests):
        rec.push_estimate(est)
        if k % 70 == 0:
            rec.hand_over()
    rec.close()
    header = ",".join(ESTIMATES_CSV_COLUMNS) + "\n"
    assert (tmp_path / "estimates.csv").read_bytes() == (header + "".join(rec._rows_by_row(e) for e in ests)).encode()
