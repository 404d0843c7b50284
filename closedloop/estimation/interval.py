"""Per-interval estimation: M-wave in its window after the pulse, volitional EMG in the rest.

Pure and synchronous: :meth:`IntervalEstimator.step` takes an interval's samples and the time of the pulse
that opened it and returns an :class:`~closedloop.types.Estimate`; its only state is the smoothed effort
and the MVC calibration value, both visible attributes.

Windows, relative to the pulse (defaults suit surface EMG with a few-ms artifact):

    0 ......... mwave_window_s[0]         artifact (blanked: never measured)
    mwave_window_s[0] .. [1]              M-wave: peak-to-peak, rectified area, latency of largest peak
    volitional_start_s .. end of interval volitional EMG: RMS after removing a linear trend

Without a pulse the whole interval is volitional EMG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from closedloop.errors import ConfigError
from closedloop.estimation.segmenter import Interval
from closedloop.types import Estimate, StreamInfo

__all__ = ["EstimatorConfig", "IntervalEstimator", "detrended_rms", "mvc_from_efforts"]


@dataclass(frozen=True)
class EstimatorConfig:
    """Estimator settings (all times in seconds after the pulse).

    Parameters
    ----------
    mwave_window_s:
        Start and end of the M-wave window; the start is also the end of artifact blanking.
    volitional_start_s:
        Where volitional EMG starts being measured (default: the end of the M-wave window).
    min_volitional_s:
        Shortest volitional window that gives an effort value; shorter gives NaN and a warning.
    smoothing_s:
        Time constant of the exponential smoothing of effort across intervals.
    control_channel:
        Index of the EMG channel whose values drive the controller.
    mvc_uv:
        Volitional RMS at maximal voluntary contraction (uV) for % MVC, one value for all channels or one
        per channel; None until calibrated.
    """

    mwave_window_s: tuple[float, float] = (0.003, 0.020)
    volitional_start_s: float | None = None
    min_volitional_s: float = 0.005
    smoothing_s: float = 0.25
    control_channel: int = 0
    mvc_uv: float | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        a, b = self.mwave_window_s
        if not (0 <= a < b):
            raise ConfigError(f"mwave_window_s = {self.mwave_window_s}: need 0 <= start < end (seconds after pulse)")
        if self.volitional_start_s is not None and self.volitional_start_s < a:
            raise ConfigError(
                f"volitional_start_s = {self.volitional_start_s} must not start inside the artifact (< {a})"
            )
        if self.min_volitional_s <= 0 or self.smoothing_s < 0:
            raise ConfigError("min_volitional_s must be > 0 and smoothing_s >= 0")
        if self.mvc_uv is not None:
            mvc = np.atleast_1d(np.asarray(self.mvc_uv, dtype=float))
            if not (np.isfinite(mvc).all() and (mvc > 0).all()):
                raise ConfigError(f"mvc_uv = {self.mvc_uv}: must be positive numbers of microvolts")

    @property
    def volitional_start(self) -> float:
        return self.mwave_window_s[1] if self.volitional_start_s is None else self.volitional_start_s


def detrended_rms(x: np.ndarray) -> np.ndarray:
    """RMS of each column of ``x`` after removing its least-squares line; NaN for fewer than 3 rows."""
    m = x.shape[0]
    if m < 3:
        return np.full(x.shape[1], np.nan)
    t = np.arange(m) - (m - 1) / 2.0
    xc = x - x.mean(axis=0)
    slope = (t @ xc) / (t @ t)
    resid = xc - np.outer(t, slope)
    return np.sqrt(np.mean(resid * resid, axis=0))


def mvc_from_efforts(efforts_uv: np.ndarray, interval_s: float, window_s: float = 0.5) -> np.ndarray:
    """MVC reference per channel: the largest mean effort over ``window_s`` of consecutive intervals (uV).

    Parameters
    ----------
    efforts_uv:
        ``(n_intervals, n_channels)`` volitional RMS of each interval of the calibration contraction.
    interval_s:
        Interval length (s).
    window_s:
        Length of the averaging window (s).
    """
    e = np.asarray(efforts_uv, dtype=float)
    if e.ndim == 1:
        e = e[:, None]
    e = e[np.isfinite(e).all(axis=1)]
    if e.shape[0] == 0:
        raise ConfigError("MVC calibration found no volitional EMG (no finite effort values)")
    w = max(1, min(e.shape[0], round(window_s / interval_s)))
    csum = np.cumsum(np.vstack([np.zeros((1, e.shape[1])), e]), axis=0)
    means = (csum[w:] - csum[:-w]) / w
    return means.max(axis=0)


class IntervalEstimator:
    """Measures M-wave and volitional EMG in each interval.

    Parameters
    ----------
    info:
        The EMG stream (rate, channels, units).
    config:
        Windows, smoothing, control channel, MVC.
    """

    def __init__(self, info: StreamInfo, config: EstimatorConfig | None = None) -> None:
        self.info = info
        self.config = config or EstimatorConfig()
        if not 0 <= self.config.control_channel < info.n_channels:
            raise ConfigError(
                f"control_channel = {self.config.control_channel}: the stream has channels 0..{info.n_channels - 1}"
            )
        fs = info.rate_hz
        self._fs = fs
        self._scale = info.scale_to_uv()
        self._m0 = round(self.config.mwave_window_s[0] * fs)
        self._m1 = round(self.config.mwave_window_s[1] * fs)
        self._v0 = round(self.config.volitional_start * fs)
        self._min_vol = max(3, round(self.config.min_volitional_s * fs))
        #: Smoothed effort of the control channel (uV), NaN before the first value.
        self.effort_smooth_uv = math.nan
        #: MVC reference per channel (uV) for % MVC; None until calibrated (see :meth:`set_mvc`).
        self.mvc_uv: np.ndarray | None = None
        if self.config.mvc_uv is not None:
            self.set_mvc(self.config.mvc_uv)

    def set_mvc(self, mvc_uv: float | np.ndarray) -> None:
        """Set the MVC reference (uV): one value for all channels or one per channel."""
        mvc = np.broadcast_to(np.asarray(mvc_uv, dtype=float), (self.info.n_channels,)).copy()
        if not (np.isfinite(mvc).all() and (mvc > 0).all()):
            raise ConfigError(f"MVC reference {mvc_uv!r} must be positive microvolts for every channel")
        self.mvc_uv = mvc

    def step(self, interval: Interval, pulse_t: float | None = None, amplitude_ma: float = math.nan) -> Estimate:
        """Estimate one interval.

        Parameters
        ----------
        interval:
            The samples (in the stream's units) and their timestamps.
        pulse_t:
            LSL time of the pulse that opened the interval, None if none.
        amplitude_ma:
            That pulse's amplitude (mA).
        """
        x = interval.samples
        ts = interval.timestamps
        n, n_ch = x.shape
        nan = np.full(n_ch, np.nan)
        warnings: list[str] = []
        ptp, area, latency = nan, nan, nan
        if not np.isfinite(x).all():
            warnings.append("non-finite samples in interval")
            return self._estimate(interval, ts[0], math.nan, nan, nan, nan, nan, nan, tuple(warnings))
        if pulse_t is not None:
            p = int(np.searchsorted(ts, pulse_t))
            t_start = float(ts[p]) if p < n else float(pulse_t)
            m0, m1 = p + self._m0, p + self._m1
            if m1 > n:
                warnings.append(
                    f"interval too short for the M-wave window: {(n - p) / self._fs * 1e3:.1f} ms after the pulse, "
                    f"window ends at {self.config.mwave_window_s[1] * 1e3:.1f} ms"
                )
            seg = x[m0 : min(m1, n)].astype(np.float64, copy=False)
            vol = x[p + self._v0 :]
            if seg.shape[0] >= 2:
                ptp = (seg.max(axis=0) - seg.min(axis=0)) * self._scale
                base = vol.mean(axis=0) if vol.shape[0] >= 2 else seg.mean(axis=0)
                dev = np.abs(seg - base)
                area = dev.sum(axis=0) / self._fs * self._scale
                latency = (np.argmax(dev, axis=0) + self._m0) / self._fs
        else:
            t_start = float(ts[0])
            vol = x
        if vol.shape[0] >= self._min_vol:
            effort = detrended_rms(vol.astype(np.float64, copy=False)) * self._scale
        else:
            effort = nan
            warnings.append(
                f"volitional window {vol.shape[0] / self._fs * 1e3:.1f} ms shorter than "
                f"{self.config.min_volitional_s * 1e3:.1f} ms"
            )
        return self._estimate(
            interval, t_start, amplitude_ma, effort, ptp, area, latency, n / self._fs, tuple(warnings)
        )

    def _estimate(
        self,
        interval: Interval,
        t_start: float,
        amplitude_ma: float,
        effort: np.ndarray,
        ptp: np.ndarray,
        area: np.ndarray,
        latency: np.ndarray,
        duration_s: float,
        warnings: tuple[str, ...],
    ) -> Estimate:
        c = self.config.control_channel
        e = float(effort[c])
        if math.isfinite(e):
            if math.isnan(self.effort_smooth_uv) or self.config.smoothing_s == 0:
                self.effort_smooth_uv = e
            else:
                alpha = 1.0 - math.exp(-duration_s / self.config.smoothing_s)
                self.effort_smooth_uv += alpha * (e - self.effort_smooth_uv)
        pct = self.effort_smooth_uv / self.mvc_uv[c] * 100.0 if self.mvc_uv is not None else math.nan
        return Estimate(
            index=interval.index,
            t_start=t_start,
            t_end=float(interval.timestamps[-1]),
            amplitude_ma=float(amplitude_ma),
            effort_uv=e,
            effort_smooth_uv=self.effort_smooth_uv,
            effort_pct_mvc=pct,
            mwave_ptp_uv=float(ptp[c]),
            channel_effort_uv=effort,
            channel_mwave_ptp_uv=ptp,
            channel_mwave_area_uvs=area,
            channel_mwave_latency_s=latency,
            warnings=warnings,
        )
