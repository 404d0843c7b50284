"""Vectorised number formatting (estimates.csv): byte for byte what Python's ``%`` writes."""

import csv
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from closedloop.recording import csvkernel, numtext
from closedloop.recording.session import ESTIMATES_CSV_COLUMNS, SessionRecorder
from closedloop.types import Estimate

#: The compiled CSV kernel (None without numba or with CLOSEDLOOP_JIT=0).
K = csvkernel.load()


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


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(max_dims=3, max_side=6),
        elements=st.floats() | st.floats(-1e7, 1e7) | st.integers(-(2**30), 2**30).map(lambda i: i / 1024),
    ),
    st.integers(1, numtext.MAX_DIGITS),
)
def test_significands_are_the_digits_and_exponent_python_writes(x, digits):
    """Where not flagged, ``s`` and ``e`` are the mantissa digits and exponent of ``"%.{digits-1}e" % |x|``: numpy's
    and the compiled kernel's (which flags the same numbers, but for a few next to the limits 1e+-290)."""
    s, e, unsure = numtext.significands(x, digits)
    assert s.shape == e.shape == unsure.shape == x.shape
    results = [(s, e, unsure)]
    if K is not None:
        x3 = np.ascontiguousarray(x.reshape(1, 1, -1))
        out = np.empty(x3.shape), np.empty(x3.shape, np.int64), np.empty(x3.shape, bool)
        K.significands(x3, x3.view(np.uint64), 0, 1, digits, *out)
        results.append(tuple(v.reshape(x.shape) for v in out))
        near_limit = (np.abs(x) > 1e289) | (np.abs(x) < 1e-289)
        assert np.array_equal(unsure[~near_limit], results[1][2][~near_limit])
    usual = np.isfinite(x) & (x != 0)
    for s, e, unsure in results:
        assert not unsure[~usual].any()
        sure = usual & ~unsure
        for v, si, ei in zip(x[sure].tolist(), s[sure].tolist(), e[sure].tolist(), strict=True):
            mantissa, exponent = (f"%.{digits - 1}e" % abs(v)).split("e")
            assert (mantissa.replace(".", ""), int(exponent)) == (str(int(si)), ei)


def test_significands_take_1_to_max_digits():
    for digits in (0, numtext.MAX_DIGITS + 1):
        with pytest.raises(ValueError):
            numtext.significands(np.ones(3), digits)


_CHANNEL_COLUMNS = [f.name for f in dataclasses.fields(Estimate) if f.name.startswith("channel_")]


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


#: The two ways the recorder formats rows: numpy (numtext) and the compiled kernel (csvkernel, K), where numba is.
PATHS = [
    pytest.param(False, id="numpy"),
    pytest.param(True, id="compiled", marks=pytest.mark.skipif(K is None, reason="numba missing or CLOSEDLOOP_JIT=0")),
]


def _recorder(tmp_path, names, compiled: bool, t_zero: float = 99.0) -> SessionRecorder:
    rec = SessionRecorder(tmp_path, threaded=False, t_zero=t_zero, compiled=compiled)
    rec._by_row_below = 0  # the vectorised formatting, even of a few rows
    rec.set_estimate_channels(names)
    assert (rec._compiled_rows() is not None) == compiled
    return rec


def _by_row(rec: SessionRecorder, ests) -> bytes:
    with np.errstate(over="ignore"):  # a latency beyond 1.8e305 s is inf in ms
        return "".join(rec._rows_by_row(e) for e in ests).encode()


@pytest.mark.parametrize("compiled", PATHS)
def test_csv_rows_of_a_batch_equal_the_row_by_row_formatting(tmp_path, compiled):
    names = ("EMG1", "biceps, long head", 'say "hi"', "nancy", "inf", "-infra", "100%", "Ünicode")
    rec = _recorder(tmp_path, names, compiled)
    rng = np.random.default_rng(3)
    ests = [_estimate(rng, k, len(names)) for k in range(40)]
    assert bytes(rec._rows(ests[:1])) == _by_row(rec, ests[:1])
    assert bytes(rec._rows(ests)) == _by_row(rec, ests)  # a larger batch after a small one (a larger buffer)
    # no MVC, no pulses: whole columns without a number
    blank = [
        dataclasses.replace(e, amplitude_ma=np.nan, channel_effort_pct_mvc=np.full(len(names), np.nan)) for e in ests
    ]
    assert bytes(rec._rows(blank)) == _by_row(rec, blank)


@pytest.mark.parametrize("compiled", PATHS)
def test_csv_rows_of_other_dtypes_and_a_nul_in_a_name(tmp_path, compiled):
    """float32 and integer arrays are written as the row-by-row formatting writes them (the latency in ms is
    computed in the array's own type there); a NUL in a name is no filler to either path."""
    rec = _recorder(tmp_path / "plain", ("EMG1", "c"), compiled)
    rng = np.random.default_rng(4)
    ests = [_estimate(rng, k, 2) for k in range(5)]
    ests = [
        dataclasses.replace(
            e,
            index=np.int64(e.index),
            amplitude_ma=np.float32(2.2),
            channel_mwave_latency_s=np.array([0.04975095, 0.0072405650], dtype=np.float32),  # 49.7509 vs 49.751 ms
            channel_mwave_ptp_uv=np.array([3, -40], dtype=np.int64),
            channel_mdf_hz=e.channel_mdf_hz.astype(np.float32),
        )
        for e in ests
    ]
    assert bytes(rec._rows(ests)) == _by_row(rec, ests)
    nul = _recorder(tmp_path / "nul", ("a\0b", "c"), compiled)
    assert bytes(nul._rows(ests)) == _by_row(nul, ests)
    with pytest.raises(ValueError):
        rec._rows([dataclasses.replace(ests[0], channel_mnf_hz=np.zeros(3))])


_ANY_NUMBER = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 0.5, 123456.5, 1234565.0, 9.765625, 999999.5, 9999995.0, 1e-5, 1e16, 1e100, 1e-300])
    | st.integers(-(2**24), 2**24).map(lambda i: i / 1024)
    | st.floats(-1e7, 1e7)
)
_NAMES = st.lists(st.text(st.sampled_from(list('ab,"\n\r%naif-0Ü€ \0')), max_size=8), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), names=_NAMES, n_iv=st.integers(1, 4), t_zero=st.floats(-1e3, 1e3))
def test_any_csv_rows_equal_the_row_by_row_formatting(tmp_path_factory, data, names, n_iv, t_zero):
    """Any numbers (NaN, inf, zeros, ties, tiny and huge), any names (commas, quotes, line ends, % signs, NaN-like
    text, non-ASCII, NUL): both paths write the bytes of the row-by-row ``%`` formatting."""
    n_ch = len(names)
    column = hnp.arrays(np.float64, n_ch, elements=_ANY_NUMBER)
    ests = [
        Estimate(
            index=data.draw(st.integers(-(10**6), 10**12)),
            t_start=data.draw(st.floats(allow_nan=True, allow_infinity=True, width=64)),
            t_end=0.0,
            amplitude_ma=data.draw(_ANY_NUMBER),
            effort_uv=1.0,
            effort_smooth_uv=1.0,
            effort_pct_mvc=np.nan,
            mwave_ptp_uv=np.nan,
            **{name: data.draw(column) for name in _CHANNEL_COLUMNS},
        )
        for _ in range(n_iv)
    ]
    for compiled in (False, True) if K is not None else (False,):
        rec = _recorder(tmp_path_factory.mktemp("rows"), tuple(names), compiled, t_zero)
        assert bytes(rec._rows(ests)) == _by_row(rec, ests)


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


def test_the_compiled_writer_is_for_fast_replays_only(tmp_path):
    """A live recorder (threaded) never starts numba; CLOSEDLOOP_JIT=0 turns the compiled writer off."""
    code = (
        "import sys; from closedloop.recording.session import SessionRecorder\n"
        "r = SessionRecorder(sys.argv[1] + '/live'); r.set_estimate_channels(('a',)); r.start(); r.close()\n"
        "f = SessionRecorder(sys.argv[1] + '/fast', threaded=False); f.set_estimate_channels(('a',))\n"
        "print(r._compiled_rows(), 'numba' in sys.modules, f._compiled_rows() is not None)"
    )
    for jit, expected in ((None, ["None", "False", str(K is not None)]), ("0", ["None", "False", "False"])):
        run = [sys.executable, "-c", code, str(tmp_path / str(jit))]
        env = {**os.environ, "CLOSEDLOOP_JIT": jit} if jit else None
        assert subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout.split() == expected


@pytest.mark.parametrize("compiled", PATHS)
def test_channel_names_are_written_as_they_are_and_only_number_cells_left_empty(tmp_path, compiled):
    """Read back with the csv module (independent of the formatting code): every channel name verbatim, even
    those that begin like a non-finite number, and an empty cell exactly where a value is NaN or inf."""
    names = ("nancy", "infraspinatus", "-inf", "nan", "inf,x", "EMG1")
    rec = SessionRecorder(tmp_path, threaded=False, t_zero=99.0, compiled=compiled)
    rec.set_estimate_channels(names)
    rng = np.random.default_rng(7)
    ests = [_estimate(rng, k, len(names)) for k in range(130)]  # above the row-by-row cut-off, and 2 below it
    rec.start()
    rec.push_estimates(ests[:128])
    rec.hand_over()
    for e in ests[128:]:
        rec.push_estimate(e)
    rec.close()
    with open(tmp_path / "estimates.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["channel"] for r in rows] == list(names) * len(ests)
    for r, (e, c) in zip(rows, ((e, c) for e in ests for c in range(len(names))), strict=True):
        value = e.channel_mdf_hz[c]
        assert (r["mdf_hz"] == "") == (not np.isfinite(value))
        if np.isfinite(value):
            assert float(r["mdf_hz"]) == pytest.approx(value, rel=1e-5)
