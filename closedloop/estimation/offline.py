"""Running the estimators over a whole recording held in memory (analysis scripts, real-data checks).

The same :class:`~closedloop.estimation.interval.IntervalEstimator` as in the live loop, fed the intervals
in batches (:meth:`~closedloop.estimation.interval.IntervalEstimator.step_many`, the same estimates as one
by one): from each pulse to the next when pulse times are known (or detected from the artifacts), in fixed
windows otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from closedloop.errors import ConfigError
from closedloop.estimation.artifacts import detect_pulses
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.estimation.segmenter import PulseSegmenter
from closedloop.types import Estimate, StreamInfo

__all__ = ["EstimateTable", "estimate_recording"]


@dataclass(frozen=True)
class EstimateTable:
    """Estimates of a recording as arrays, one row per interval (control channel unless ``channel_*``).

    ``t_s`` is the start of each interval in seconds from the start of the recording.
    """

    t_s: np.ndarray
    has_pulse: np.ndarray
    effort_uv: np.ndarray
    mwave_ptp_uv: np.ndarray
    mwave_ptp_rel: np.ndarray
    mdf_hz: np.ndarray
    mnf_hz: np.ndarray
    fi_nsm5: np.ndarray
    pulse_samples: np.ndarray
    estimates: tuple[Estimate, ...]

    @classmethod
    def from_estimates(cls, estimates: list[Estimate], channel: int, t0: float, pulses: np.ndarray) -> EstimateTable:
        def col(name: str) -> np.ndarray:
            return np.array([getattr(e, name)[channel] for e in estimates])

        return cls(
            t_s=np.array([e.t_start for e in estimates]) - t0,
            has_pulse=np.array([e.has_pulse for e in estimates]),
            effort_uv=col("channel_effort_uv"),
            mwave_ptp_uv=col("channel_mwave_ptp_uv"),
            mwave_ptp_rel=col("channel_mwave_ptp_rel"),
            mdf_hz=col("channel_mdf_hz"),
            mnf_hz=col("channel_mnf_hz"),
            fi_nsm5=col("channel_fi_nsm5"),
            pulse_samples=pulses,
            estimates=tuple(estimates),
        )


def estimate_recording(
    samples: np.ndarray,
    info: StreamInfo,
    config: EstimatorConfig | None = None,
    pulse_samples: np.ndarray | None = None,
    detect: bool = False,
    window_s: float = 0.1,
    channel: int | None = None,
    max_interval_s: float = 0.5,
) -> EstimateTable:
    """Estimate a whole recording.

    Parameters
    ----------
    samples:
        ``(n, C)`` in ``info.units``.
    info:
        Stream description (rate, channels, units).
    config:
        Estimator settings.
    pulse_samples:
        Sample indices of the stimulation pulses, if known.
    detect:
        Find the pulses from their artifacts (:func:`~closedloop.estimation.artifacts.detect_pulses`) when
        ``pulse_samples`` is not given.
    window_s:
        Interval length where there are no pulses (s).
    channel:
        Channel reported in the table's columns (default: the config's control channel).
    max_interval_s:
        Stretches between pulses longer than this are cut into ``window_s`` windows after the pulse's own
        interval (so a pause in stimulation is measured like any stimulation-free stretch).
    """
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    fs = info.rate_hz
    if x.shape[1] != info.n_channels:
        raise ConfigError(f"{x.shape[1]} channels of samples but the stream info lists {info.n_channels}")
    if pulse_samples is None and detect:
        pulse_samples = detect_pulses(x, fs)
    pulses = np.unique(np.asarray(pulse_samples if pulse_samples is not None else [], dtype=np.int64))
    pulses = pulses[(pulses >= 0) & (pulses < n)]
    est = IntervalEstimator(info, config)
    seg = PulseSegmenter(info.n_channels, fs, window_s, max_interval_s)
    ts = np.arange(n) / fs
    items = seg.push(x, ts, pulses) + seg.flush()
    out: list[Estimate] = est.step_many([iv for iv, _ in items], [times for _, times in items]) if items else []
    c = est.config.control_channel if channel is None else channel
    return EstimateTable.from_estimates(out, c, 0.0, pulses)
