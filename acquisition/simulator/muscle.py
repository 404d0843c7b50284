"""A virtual muscle: the simulated participant's EMG, evoked responses, force and fatigue.

Pure numpy/scipy and fully deterministic for a given seed: no I/O, no wall clock, no LSL. Time is the
sample index; ``t0`` only labels it. The model, per sample ``n`` at ``t_n = t0 + n / rate_hz``:

EMG (microvolts, ``(n, n_channels)``)
    ``voluntary + M-waves + stimulation artifacts + amplifier noise + powerline``.

    *Voluntary*: white Gaussian noise through a Butterworth band-pass (``scipy.signal.butter`` order 2,
    i.e. two second-order sections) with corners ``emg_band_hz * v``, normalised to unit RMS, times
    ``mvc_emg_rms_uv * gain[c] * drive``. ``v = 1 - mdf_fatigue_coupling * fatigue`` (quantised to
    steps of 0.002) compresses the whole spectrum as the muscle fatigues. The amplitude follows the
    neural drive itself (not the low-passed drive that makes force): EMG precedes force.

    *M-wave*: after every pulse, on channel ``c``, a smooth biphasic wave ``sin(pi u)^2 sin(2 pi u)``,
    ``u = (t - t_pulse - latency_c) / mwave_duration_s`` on ``0 < u < 1`` and zero elsewhere, with
    ``latency_c = mwave_latency_s + (c mod 4) * mwave_channel_delay_s``. Its *sampled* peak-to-peak is
    ``m_max_uv * gain[c] * R(Q) * (1 - mwave_fatigue_coupling * fatigue)`` (times a log-normal factor of
    mean 1 and coefficient of variation ``mwave_cv`` per pulse) exactly (the template is
    normalised on the sample grid, whose phase relative to the pulse is fixed), which is the value
    recorded in :attr:`AppliedPulse.mwave_ptp_uv`.

    *Artifact*: ``artifact_uv_per_ma * amplitude_ma * gain[c] * (-1)**c * exp(-k / (rate * tau))`` for
    ``k >= 0`` samples after the pulse sample, cut to zero once below 1e-6 of its peak.

Recruitment
    Charge ``Q = amplitude_ma * pulse_width_us / 1000`` (uC); ``R(Q) = 1 / (1 + exp(-slope (Q - q50)))``
    with ``q50 = threshold_uc + ln(9) / slope`` so that ``R(threshold_uc) = 0.1``.

Force (newtons): Ding et al. 2003, J Electromyogr Kinesiol 13:575-588, in SI units
    ``CN(t) = sum_i r_i R_i ((t - t_i) / tau_c) exp(-(t - t_i) / tau_c)`` over pulses with
    ``0 <= t - t_i < 12 tau_c``, ``R_i = 1 + (R0 - 1) exp(-(t_i - t_{i-1}) / tau_c)``, ``R_1 = 1``,
    ``R0 = Km + r0_km_offset``; ``x = CN / (Km + CN)``; ``dF/dt = A x - F / (tau1 + tau2 x)``.

    *Our extension*: ``r_i = R(Q_i)`` scales each pulse's contribution to CN (the stimulated force grows
    with the fraction of motor units recruited; Ding's model is for one fixed intensity, ``r_i = 1``).

    ``F`` is integrated exactly for piecewise-constant coefficients, ``x`` held over each sample
    interval at its value at the interval's midpoint (second-order accurate):
    ``F[n+1] = F[n] e^(-dt/tau_n) + A x_n tau_n (1 - e^(-dt/tau_n))``, ``tau_n = tau1 + tau2 x_n``,
    solved as a first-order linear recurrence with cumulative products and sums (no per-sample loop).

    Voluntary force ``F_vol = drive_lp * voluntary_max_force_n * A / A_rest`` with ``drive_lp`` the
    drive through a first-order low-pass (``drive_tau_s``). Measured force
    ``F_total = F_vol + (1 - drive_lp) * F`` (stimulation adds only the motor units that are not
    voluntarily active: this is what makes twitch interpolation work; voluntary activation = drive).

Fatigue (Ding 2003), driven by ``F_total``
    ``dA/dt = -(A - A_rest)/tau_fat + alpha_A F``, ``dtau1/dt = -(tau1 - tau1_rest)/tau_fat +
    alpha_tau1 F``, ``dKm/dt = -(Km - Km_rest)/tau_fat + alpha_Km F``, alphas times
    ``fatigue_rate_scale``. These three are updated once per *fatigue step* of
    ``round(fatigue_update_s * rate_hz)`` samples on a grid fixed to the sample index (not per
    generated block), with the exact solution for the step's mean ``F_total``; between updates they
    are constant. ``fatigue = clip(1 - A / A_rest, 0, 1)``.

Chunking invariance
    Every state that couples samples (filters, overlay of future M-wave/artifact samples, the force
    recurrence, the fatigue grid, the random stream) is carried so that generating ``N`` samples in one
    call or in any split of calls gives bit-identical output for the same seed and pulses.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import signal, special

from closedloop.errors import ConfigError

__all__ = [
    "AppliedPulse",
    "MuscleParams",
    "MuscleState",
    "SimBlock",
    "VirtualMuscle",
]

_V_STEP = 0.002  # quantum of the EMG frequency scale v
_CN_WINDOW = 12.0  # pulses older than this many tau_c no longer contribute to CN
_ARTIFACT_CUTOFF = 1e-6  # the artifact kernel is cut to zero below this fraction of its peak
_SAMPLE_TOL = 1e-6  # a pulse time within this fraction of a sample before a sample lands on it
_MDF_GRID = 2**15 + 1  # points from 0 to Nyquist for the analytic spectrum


def _finite(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r}: must be a number") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name} = {value!r}: must be a finite number")
    return v


def _positive(name: str, value: object) -> float:
    v = _finite(name, value)
    if v <= 0:
        raise ConfigError(f"{name} = {value!r}: must be > 0")
    return v


def _nonneg(name: str, value: object) -> float:
    v = _finite(name, value)
    if v < 0:
        raise ConfigError(f"{name} = {value!r}: must be >= 0")
    return v


def _integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} = {value!r}: must be an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{name} = {value!r}: must be an integer >= {minimum}")
    return int(value)


@dataclass(frozen=True)
class MuscleParams:
    """Parameters of :class:`VirtualMuscle`; validated on creation (raises ConfigError).

    Parameters
    ----------
    n_channels:
        Number of EMG channels (>= 1).
    rate_hz:
        Sampling rate in Hz.
    seed:
        Seed of the random stream (non-negative integer).
    mvc_emg_rms_uv:
        RMS (microvolts) of the voluntary EMG on channel 0 at drive 1.0.
    channel_gains:
        One gain per channel applied to voluntary EMG, M-waves and artifacts; None gives
        ``1.0, 0.8, 0.64, 0.512`` repeating every four channels (electrodes at four distances from the
        innervation zone, as in a grid). Stored as a tuple of floats.
    emg_band_hz:
        ``(low, high)`` corners in Hz of the band-pass that shapes the unfatigued voluntary EMG;
        ``0 < low < high < 0.45 * rate_hz``.
    noise_rms_uv:
        RMS (microvolts) of the white amplifier noise on each channel.
    powerline_hz, powerline_uv:
        Frequency (Hz) and peak amplitude (microvolts, same phase on all channels) of powerline hum.
    threshold_uc:
        Charge (microcoulombs) at which the M-wave reaches 10 % of its maximum.
    slope_per_uc:
        Slope (1/uC) of the logistic recruitment curve.
    m_max_uv:
        Peak-to-peak M-wave (microvolts) at full recruitment on channel 0, unfatigued.
    mwave_latency_s, mwave_duration_s:
        Onset of the M-wave after the pulse and its duration (s); the duration must span >= 4 samples.
    mwave_channel_delay_s:
        Extra M-wave latency per electrode position (s): channel ``c`` is delayed by ``(c mod 4)`` times this.
    artifact_uv_per_ma:
        Stimulation artifact peak on channel 0 per mA of pulse amplitude (microvolts/mA).
    artifact_tau_s:
        Time constant (s) of the artifact's exponential decay.
    tau_c_s, a_rest_n_per_s, tau1_rest_s, tau2_s, km_rest, r0_km_offset:
        Ding 2003 force model: ``tau_c`` (s), ``A_rest`` (N/s), ``tau1_rest`` (s), ``tau2`` (s),
        ``Km_rest`` (dimensionless) and ``R0 - Km`` (dimensionless).
    alpha_a_per_s2, alpha_tau1_per_n, alpha_km_per_s_n:
        Ding 2003 fatigue rates: ``alpha_A`` (1/s^2, <= 0), ``alpha_tau1`` (1/N, >= 0),
        ``alpha_Km`` (1/(s N), >= 0).
    tau_fat_s:
        Recovery time constant of the fatigue states (s).
    fatigue_rate_scale:
        Multiplies the three alphas (0 turns fatigue off).
    fatigue_update_s:
        Period (s) of the fatigue-state update grid (rounded to whole samples, at least one).
    voluntary_max_force_n:
        Voluntary force (N) at drive 1.0, unfatigued.
    drive_tau_s:
        Time constant (s) of the first-order low-pass from drive to voluntary force.
    mwave_fatigue_coupling, mdf_fatigue_coupling:
        ``m = 1 - mwave_fatigue_coupling * fatigue`` scales the M-wave; ``v = 1 -
        mdf_fatigue_coupling * fatigue`` scales the EMG band; both in ``[0, 1)``.
    mwave_cv:
        Pulse-to-pulse variability of the M-wave: each pulse's M-wave is multiplied by a log-normal factor
        of mean 1 and this coefficient of variation (0..1; real M-waves vary by a few percent).
    force_noise_n:
        RMS (N) of white noise added to the *measured* force (a transducer's noise); the force that drives
        fatigue and the ground truth are noise-free.
    """

    n_channels: int = 4
    rate_hz: float = 2048.0
    seed: int = 0
    # voluntary EMG
    mvc_emg_rms_uv: float = 400.0
    channel_gains: tuple[float, ...] | None = None
    emg_band_hz: tuple[float, float] = (30.0, 150.0)
    noise_rms_uv: float = 3.0
    powerline_hz: float = 50.0
    powerline_uv: float = 0.0
    # recruitment and M-wave
    threshold_uc: float = 4.0
    slope_per_uc: float = 1.5
    m_max_uv: float = 5000.0
    mwave_latency_s: float = 0.004
    mwave_duration_s: float = 0.010
    mwave_channel_delay_s: float = 0.0002
    # stimulation artifact
    artifact_uv_per_ma: float = 400.0
    artifact_tau_s: float = 0.0005
    # Ding 2003 force model (SI units)
    tau_c_s: float = 0.020
    a_rest_n_per_s: float = 3009.0
    tau1_rest_s: float = 0.050957
    tau2_s: float = 0.060
    km_rest: float = 0.103
    r0_km_offset: float = 1.04
    alpha_a_per_s2: float = -0.4
    alpha_tau1_per_n: float = 2.1e-5
    alpha_km_per_s_n: float = 1.9e-5
    tau_fat_s: float = 127.0
    fatigue_rate_scale: float = 1.0
    fatigue_update_s: float = 0.03125
    # voluntary force
    voluntary_max_force_n: float = 300.0
    drive_tau_s: float = 0.05
    # fatigue couplings
    mwave_fatigue_coupling: float = 0.5
    mdf_fatigue_coupling: float = 0.4
    # trial-to-trial variability and sensor noise (0: none)
    mwave_cv: float = 0.0
    force_noise_n: float = 0.0

    def __post_init__(self) -> None:
        n_ch = _integer("MuscleParams.n_channels", self.n_channels, 1)
        rate = _positive("MuscleParams.rate_hz", self.rate_hz)
        _integer("MuscleParams.seed", self.seed, 0)

        if self.channel_gains is None:
            gains = tuple(0.8 ** (c % 4) for c in range(n_ch))
        else:
            try:
                gains = tuple(float(g) for g in self.channel_gains)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"MuscleParams.channel_gains = {self.channel_gains!r}: must be a sequence of numbers"
                ) from None
            if len(gains) != n_ch:
                raise ConfigError(
                    f"MuscleParams.channel_gains has {len(gains)} values; n_channels = {n_ch} needs one per channel"
                )
            if not all(math.isfinite(g) and g >= 0 for g in gains):
                raise ConfigError(f"MuscleParams.channel_gains = {gains}: every gain must be finite and >= 0")
        object.__setattr__(self, "channel_gains", gains)

        try:
            lo, hi = (float(f) for f in self.emg_band_hz)
        except (TypeError, ValueError):
            raise ConfigError(
                f"MuscleParams.emg_band_hz = {self.emg_band_hz!r}: must be two numbers (low, high) in Hz"
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi < 0.45 * rate):
            raise ConfigError(
                f"MuscleParams.emg_band_hz = {self.emg_band_hz!r}: need 0 < low < high < 0.45 * rate_hz "
                f"= {0.45 * rate:g} Hz"
            )
        object.__setattr__(self, "emg_band_hz", (lo, hi))

        for name in (
            "mvc_emg_rms_uv",
            "noise_rms_uv",
            "powerline_uv",
            "m_max_uv",
            "mwave_latency_s",
            "mwave_channel_delay_s",
            "artifact_uv_per_ma",
            "tau2_s",
            "r0_km_offset",
            "alpha_tau1_per_n",
            "alpha_km_per_s_n",
            "fatigue_rate_scale",
            "voluntary_max_force_n",
            "powerline_hz",
        ):
            _nonneg(f"MuscleParams.{name}", getattr(self, name))
        for name in (
            "threshold_uc",
            "slope_per_uc",
            "mwave_duration_s",
            "artifact_tau_s",
            "tau_c_s",
            "a_rest_n_per_s",
            "tau1_rest_s",
            "km_rest",
            "tau_fat_s",
            "fatigue_update_s",
            "drive_tau_s",
        ):
            _positive(f"MuscleParams.{name}", getattr(self, name))
        if _finite("MuscleParams.alpha_a_per_s2", self.alpha_a_per_s2) > 0:
            raise ConfigError(f"MuscleParams.alpha_a_per_s2 = {self.alpha_a_per_s2!r}: must be <= 0 (fatigue lowers A)")
        if self.mwave_duration_s * rate < 4:
            raise ConfigError(
                f"MuscleParams.mwave_duration_s = {self.mwave_duration_s!r}: must span at least 4 samples "
                f"(>= {4 / rate:g} s at rate_hz = {rate:g})"
            )
        if self.fatigue_update_s > 200 * self.tau1_rest_s:
            raise ConfigError(
                f"MuscleParams.fatigue_update_s = {self.fatigue_update_s!r}: must be <= 200 * tau1_rest_s "
                f"= {200 * self.tau1_rest_s:g} s (the force recurrence is re-anchored on this grid)"
            )
        if not 0 <= _finite("MuscleParams.mwave_cv", self.mwave_cv) <= 1:
            raise ConfigError(f"MuscleParams.mwave_cv = {self.mwave_cv!r}: must be in [0, 1]")
        _nonneg("MuscleParams.force_noise_n", self.force_noise_n)
        for name in ("mwave_fatigue_coupling", "mdf_fatigue_coupling"):
            c = _finite(f"MuscleParams.{name}", getattr(self, name))
            if not 0 <= c < 1:
                raise ConfigError(f"MuscleParams.{name} = {c!r}: must be in [0, 1)")

    @property
    def q50_uc(self) -> float:
        """Charge (uC) at which recruitment is 50 %: ``threshold_uc + ln(9) / slope_per_uc``."""
        return self.threshold_uc + math.log(9.0) / self.slope_per_uc


@dataclass(frozen=True, eq=False)
class AppliedPulse:
    """A stimulation pulse as the muscle received it.

    Attributes
    ----------
    t:
        Timestamp (s) of the sample it was applied at.
    requested_t:
        Time (s) it was scheduled for.
    sample_index:
        Index of that sample counted from ``t0`` (0-based).
    channel:
        Stimulator output channel (all channels stimulate the one muscle).
    amplitude_ma, pulse_width_us, charge_uc:
        Amplitude (mA), pulse width (us) and charge (uC) of one phase.
    recruitment:
        Fraction of motor units recruited, ``R(charge_uc)`` in ``[0, 1]``.
    mwave_ptp_uv:
        ``(n_channels,)`` true peak-to-peak (microvolts) of the evoked M-wave on each EMG channel, as it
        is in the samples without noise and artifact.
    late:
        True if the requested time was before the next sample to generate when it was scheduled (it was
        then applied at that next sample).
    """

    t: float
    requested_t: float
    sample_index: int
    channel: int
    amplitude_ma: float
    pulse_width_us: float
    charge_uc: float
    recruitment: float
    mwave_ptp_uv: np.ndarray
    late: bool


@dataclass(frozen=True, eq=False)
class SimBlock:
    """One block of consecutive simulated samples with its ground truth.

    Attributes
    ----------
    timestamps:
        ``(n,)`` float64, seconds (``t0 + index / rate_hz``).
    emg:
        ``(n, n_channels)`` float32, microvolts: voluntary EMG + M-waves + artifacts + amplifier noise +
        powerline.
    force_n:
        ``(n,)`` float64, measured force in newtons (``f_vol_n + f_stim_n``).
    drive:
        ``(n,)`` the voluntary drive used (clipped to ``[0, 1]``); this is also the true voluntary
        activation.
    fatigue:
        ``(n,)`` fatigue ``clip(1 - A / A_rest, 0, 1)``.
    mwave_scale:
        ``(n,)`` M-wave amplitude factor ``m`` applied to pulses at these samples.
    freq_scale:
        ``(n,)`` EMG frequency scale ``v`` in use (quantised to steps of 0.002).
    f_stim_n:
        ``(n,)`` stimulated contribution to the force, ``(1 - drive_lp) * F_Ding`` (N).
    f_vol_n:
        ``(n,)`` voluntary force (N).
    pulses:
        The pulses applied at samples of this block, in order of application.
    """

    timestamps: np.ndarray
    emg: np.ndarray
    force_n: np.ndarray
    drive: np.ndarray
    fatigue: np.ndarray
    mwave_scale: np.ndarray
    freq_scale: np.ndarray
    f_stim_n: np.ndarray
    f_vol_n: np.ndarray
    pulses: tuple[AppliedPulse, ...]

    def __len__(self) -> int:
        return self.timestamps.shape[0]


@dataclass(frozen=True)
class MuscleState:
    """The muscle's state at the next sample to generate (time ``t``, s).

    Attributes
    ----------
    t:
        Timestamp (s) of the next sample.
    a_n_per_s, tau1_s, km:
        Ding fatigue states ``A`` (N/s), ``tau1`` (s) and ``Km`` (dimensionless).
    fatigue:
        ``clip(1 - A / A_rest, 0, 1)``.
    f_ding_n:
        The Ding model's force state ``F`` (N), before the ``1 - drive_lp`` scaling.
    f_stim_n, f_vol_n, force_n:
        Stimulated contribution, voluntary force and their sum (N).
    drive_lp:
        Low-passed drive.
    """

    t: float
    a_n_per_s: float
    tau1_s: float
    km: float
    fatigue: float
    f_ding_n: float
    f_stim_n: float
    f_vol_n: float
    force_n: float
    drive_lp: float


@functools.lru_cache(maxsize=4096)
def _band_design(lo_hz: float, hi_hz: float, rate_hz: float, key: int) -> np.ndarray:
    """Unit-output-RMS band-pass SOS for corners ``(lo, hi) * key * _V_STEP`` (cached and shared).

    ``scipy.signal.butter(2, ..., btype="bandpass")``: zeros at z = 1 and z = -1 (two each) and two
    conjugate pole pairs, built directly into two sections ``(1 - z^-2) / (1 - 2 Re(p) z^-1 + |p|^2
    z^-2)`` (this is ~5x faster than ``zpk2sos``). The gain makes the output RMS 1 for unit-variance
    white input: the impulse response's energy, summed until the slowest pole has decayed below 1e-9
    in amplitude.
    """
    v = key * _V_STEP
    _, poles, _ = signal.butter(2, [lo_hz * v, hi_hz * v], btype="bandpass", fs=rate_hz, output="zpk")
    upper = poles[poles.imag > 0]
    if upper.size == 2:
        sos = np.zeros((2, 6))
        sos[:, 0] = 1.0
        sos[:, 2] = -1.0
        sos[:, 3] = 1.0
        sos[:, 4] = -2.0 * upper.real
        sos[:, 5] = np.abs(upper) ** 2
    else:  # pragma: no cover - real poles do not occur for a 2nd-order Butterworth band-pass
        sos = signal.butter(2, [lo_hz * v, hi_hz * v], btype="bandpass", fs=rate_hz, output="sos")
    radius = float(np.abs(poles).max())
    n_imp = min(max(math.ceil(math.log(1e-9) / math.log(radius)), 64), 10_000_000)
    impulse = np.zeros(n_imp)
    impulse[0] = 1.0
    h = signal.sosfilt(sos, impulse)
    sos[0, :3] /= math.sqrt(float(np.dot(h, h)))
    return sos  # shared by all muscles: never modified (sosfilt needs a writable buffer)


@functools.lru_cache(maxsize=256)
def _band_spectrum(lo_hz: float, hi_hz: float, rate_hz: float, key: int) -> tuple[float, float]:
    """(median, mean) frequency in Hz of ``|H(f)|^2`` of :func:`_band_design` on a fine grid."""
    sos = _band_design(lo_hz, hi_hz, rate_hz, key)
    freqs = np.linspace(0.0, rate_hz / 2.0, _MDF_GRID)
    _, h = signal.sosfreqz(sos, worN=freqs, fs=rate_hz)
    psd = np.abs(h) ** 2
    seg = 0.5 * (psd[1:] + psd[:-1]) * np.diff(freqs)
    cum = np.concatenate(([0.0], np.cumsum(seg)))
    total = cum[-1]
    mdf = float(np.interp(0.5 * total, cum, freqs))
    fseg = 0.5 * (psd[1:] * freqs[1:] + psd[:-1] * freqs[:-1]) * np.diff(freqs)
    mnf = float(fseg.sum() / total)
    return mdf, mnf


@functools.lru_cache(maxsize=4096)
def _band_indices(
    lo_hz: float, hi_hz: float, rate_hz: float, key: int, band: tuple[float, float]
) -> tuple[float, float, float]:
    """(median frequency, mean frequency, FInsm5) of ``|H(f)|^2`` within ``band``, with the definitions of
    :func:`closedloop.estimation.spectral.spectral_indices` (the estimators' own)."""
    from closedloop.estimation.spectral import spectral_indices

    sos = _band_design(lo_hz, hi_hz, rate_hz, key)
    freqs = np.linspace(0.0, rate_hz / 2.0, _MDF_GRID)
    _, h = signal.sosfreqz(sos, worN=freqs, fs=rate_hz)
    mdf, mnf, fi = spectral_indices(freqs, np.abs(h) ** 2, band)
    return float(mdf), float(mnf), float(fi)


class VirtualMuscle:
    """A simulated muscle under voluntary drive and electrical stimulation.

    Parameters
    ----------
    params:
        Model parameters (default :class:`MuscleParams`).
    t0:
        Timestamp (s) of the first sample.

    Notes
    -----
    Use :meth:`schedule_pulse` for pulses and :meth:`generate` for samples; :meth:`generate` applies the
    queued pulses that fall in its block. See the module docstring for the model.
    """

    def __init__(self, params: MuscleParams | None = None, t0: float = 0.0) -> None:
        p = MuscleParams() if params is None else params
        if not isinstance(p, MuscleParams):
            raise ConfigError(f"params = {params!r}: must be a MuscleParams")
        self.params = p
        self._t0 = _finite("t0", t0)
        self._rate = float(p.rate_hz)
        self._dt = 1.0 / self._rate
        c = p.n_channels
        self._gains = np.asarray(p.channel_gains, dtype=float)
        self._vol_gain = p.mvc_emg_rms_uv * self._gains
        self._art_gain = p.artifact_uv_per_ma * self._gains * np.where(np.arange(c) % 2 == 0, 1.0, -1.0)
        self._q50 = p.q50_uc
        self._k_fat = max(1, round(p.fatigue_update_s * self._rate))
        self._cn_window = math.ceil(_CN_WINDOW * p.tau_c_s * self._rate) + 1

        # waveforms of one pulse, sample offsets 0..L-1 after the pulse sample
        lat = p.mwave_latency_s + p.mwave_channel_delay_s * (np.arange(c) % 4)
        n_mw = math.ceil((lat.max() + p.mwave_duration_s) * self._rate) + 1
        n_art = math.ceil(p.artifact_tau_s * self._rate * math.log(1.0 / _ARTIFACT_CUTOFF)) + 1
        self._n_over = max(n_mw, n_art)
        k = np.arange(self._n_over, dtype=float)[:, None]
        u = (k / self._rate - lat[None, :]) / p.mwave_duration_s
        inside = (u > 0) & (u < 1)
        tmpl = np.where(inside, np.sin(np.pi * u) ** 2 * np.sin(2 * np.pi * u), 0.0)
        tmpl /= np.ptp(tmpl, axis=0)[None, :]
        self._mw_template = tmpl
        art = np.exp(-np.arange(self._n_over) / (self._rate * p.artifact_tau_s))
        art[art < _ARTIFACT_CUTOFF] = 0.0
        self._art_kernel = art[:, None]

        # drive -> drive_lp, exact first-order low-pass
        a_lp = math.exp(-self._dt / p.drive_tau_s)
        self._lp_b = np.array([1.0 - a_lp])
        self._lp_a = np.array([1.0, -a_lp])
        self._lp_zi = np.zeros(1)
        self._drive_lp = 0.0  # low-passed drive at the last generated sample

        # random streams: the main one (2 * n_channels normals per sample: filter input, amplifier noise)
        # and one to bring the shaping filter into its stationary state before t0
        # (children 0 and 1); M-wave variability (one normal per pulse) and force-sensor noise (one per
        # sample) have streams of their own, so that neither changes the EMG of the same seed
        main_ss, warm_ss, mwave_ss, force_ss = np.random.SeedSequence(p.seed).spawn(4)
        self._rng = np.random.default_rng(main_ss)
        self._mwave_rng = np.random.default_rng(mwave_ss)
        self._force_rng = np.random.default_rng(force_ss)
        self._mwave_sigma = math.sqrt(math.log1p(p.mwave_cv**2))

        # fatigue / force state
        self._A = p.a_rest_n_per_s
        self._tau1 = p.tau1_rest_s
        self._km = p.km_rest
        self._fat_sum = 0.0  # running sum of F_total over the current fatigue step
        self._f_anchor = 0.0  # F at the last anchor; F = P * (f_anchor + S)
        self._P = 1.0
        self._S = 0.0
        self._last_pulse_index: int | None = None
        self._recent_idx = np.zeros(0, dtype=np.int64)  # sample index of pulses still in CN
        self._recent_w = np.zeros(0)  # r_i * R_i of those pulses
        self._overlay = np.zeros((self._n_over, c))
        self._pending: list[tuple[int, int, float, int, float, float, bool]] = []
        self._seq = 0
        self._n = 0
        # design every filter that fatigue can reach now (cached per process), so that generate() never
        # spends time on a design
        lo_hz, hi_hz = p.emg_band_hz
        for key in range(self._freq_key(1.0), self._freq_key(0.0) + 1):
            _band_design(lo_hz, hi_hz, self._rate, key)
        self._set_fatigue_couplings()
        n_sec = self._sos.shape[0]
        warm = np.random.default_rng(warm_ss).standard_normal((int(self._rate) + 64, c))
        _, self._zi = signal.sosfilt(self._sos, warm, axis=0, zi=np.zeros((n_sec, 2, c)))

    # ------------------------------------------------------------------ properties and truth helpers

    @property
    def now(self) -> float:
        """Timestamp (s) of the next sample to be generated."""
        return self._t0 + self._n / self._rate

    @property
    def t0(self) -> float:
        """Timestamp (s) of the first sample."""
        return self._t0

    @property
    def n_generated(self) -> int:
        """Number of samples generated so far."""
        return self._n

    @property
    def q50_uc(self) -> float:
        """Charge (uC) at which recruitment is 50 %."""
        return self._q50

    @property
    def state(self) -> MuscleState:
        """The state at the next sample to generate."""
        p = self.params
        dlp = self._drive_lp
        f_ding = self._P * (self._f_anchor + self._S)
        f_vol = dlp * p.voluntary_max_force_n * self._A / p.a_rest_n_per_s
        f_stim = (1.0 - dlp) * f_ding
        return MuscleState(
            t=self.now,
            a_n_per_s=self._A,
            tau1_s=self._tau1,
            km=self._km,
            fatigue=self._fatigue,
            f_ding_n=f_ding,
            f_stim_n=f_stim,
            f_vol_n=f_vol,
            force_n=f_vol + f_stim,
            drive_lp=dlp,
        )

    def recruitment(self, charge_uc: float | np.ndarray) -> float | np.ndarray:
        """Fraction of motor units recruited (0..1) by a pulse of ``charge_uc`` microcoulombs."""
        q = np.asarray(charge_uc, dtype=float)
        r = special.expit(self.params.slope_per_uc * (q - self._q50))
        return float(r) if r.ndim == 0 else r

    def threshold_current_ma(self, pulse_width_us: float) -> float:
        """Amplitude (mA) that gives ``threshold_uc`` (10 % recruitment) at ``pulse_width_us``."""
        pw = _positive("pulse_width_us", pulse_width_us)
        return self.params.threshold_uc * 1000.0 / pw

    def true_mwave_ptp_uv(self, charge_uc: float, fatigue: float, channel: int = 0) -> float:
        """Noise-free sampled peak-to-peak M-wave (microvolts) on ``channel`` for a pulse of ``charge_uc``
        at the given ``fatigue`` (clipped to ``[0, 1]``)."""
        q = _nonneg("charge_uc", charge_uc)
        f = min(max(_finite("fatigue", fatigue), 0.0), 1.0)
        ch = _integer("channel", channel, 0)
        if ch >= self.params.n_channels:
            raise ConfigError(f"channel = {ch}: must be < n_channels = {self.params.n_channels}")
        m = 1.0 - self.params.mwave_fatigue_coupling * f
        return float(self.params.m_max_uv * self._gains[ch] * self.recruitment(q) * m)

    def true_mdf_hz(self, fatigue: float) -> float:
        """Median frequency (Hz) of the voluntary EMG process at ``fatigue`` (amplifier noise excluded)."""
        return _band_spectrum(*self.params.emg_band_hz, self._rate, self._freq_key(fatigue))[0]

    def true_mnf_hz(self, fatigue: float) -> float:
        """Mean frequency (Hz) of the voluntary EMG process at ``fatigue`` (amplifier noise excluded)."""
        return _band_spectrum(*self.params.emg_band_hz, self._rate, self._freq_key(fatigue))[1]

    def true_spectral_indices(
        self, fatigue: float, band_hz: tuple[float, float] = (20.0, 450.0)
    ) -> tuple[float, float, float]:
        """Median and mean frequency (Hz) and FInsm5 of the voluntary EMG at ``fatigue`` within ``band_hz``,
        computed the way the estimators compute them (:mod:`closedloop.estimation.spectral`)."""
        band = (float(band_hz[0]), float(min(band_hz[1], 0.5 * self._rate)))
        return _band_indices(*self.params.emg_band_hz, self._rate, self._freq_key(fatigue), band)

    def freq_scale(self, fatigue: float) -> float:
        """EMG frequency scale ``v`` used at ``fatigue`` (quantised to steps of 0.002)."""
        return self._freq_key(fatigue) * _V_STEP

    def _freq_key(self, fatigue: float) -> int:
        f = min(max(_finite("fatigue", fatigue), 0.0), 1.0)
        return round((1.0 - self.params.mdf_fatigue_coupling * f) / _V_STEP)

    def _set_fatigue_couplings(self) -> None:
        p = self.params
        self._fatigue = min(max(1.0 - self._A / p.a_rest_n_per_s, 0.0), 1.0)
        self._mscale = 1.0 - p.mwave_fatigue_coupling * self._fatigue
        self._key = self._freq_key(self._fatigue)
        self._v = self._key * _V_STEP
        self._sos = _band_design(*p.emg_band_hz, self._rate, self._key)

    # ------------------------------------------------------------------ input

    def schedule_pulse(self, t: float, channel: int, amplitude_ma: float, pulse_width_us: float) -> None:
        """Queue a stimulation pulse.

        Parameters
        ----------
        t:
            Requested time (s). The pulse is applied at the first sample whose timestamp is >= ``t`` (to
            within 1e-6 of a sample); if that sample has already been generated, at the next sample, and
            the pulse is flagged ``late``.
        channel:
            Stimulator output channel (>= 0); recorded, all channels stimulate this muscle.
        amplitude_ma:
            Amplitude (mA, >= 0); 0 means no pulse and is ignored.
        pulse_width_us:
            Pulse width (us, >= 0); 0 means no pulse and is ignored.
        """
        t = _finite("t", t)
        ch = _integer("channel", channel, 0)
        amp = _nonneg("amplitude_ma", amplitude_ma)
        pw = _nonneg("pulse_width_us", pulse_width_us)
        if amp == 0.0 or pw == 0.0:
            return
        j = math.ceil((t - self._t0) * self._rate - _SAMPLE_TOL)
        late = j < self._n
        j = max(j, self._n)
        item = (j, self._seq, t, ch, amp, pw, late)
        self._seq += 1
        bisect.insort(self._pending, item)

    def cancel_pending(self) -> int:
        """Drop the queued pulses not yet applied (a stimulator turned off); returns how many."""
        n = len(self._pending)
        self._pending.clear()
        return n

    # ------------------------------------------------------------------ generation

    def generate(self, n: int, drive: float | np.ndarray = 0.0) -> SimBlock:
        """Generate the next ``n`` samples.

        Parameters
        ----------
        n:
            Number of samples (>= 0).
        drive:
            Voluntary neural drive in ``[0, 1]`` (values outside are clipped): one number for the whole
            block or an ``(n,)`` array. NaN is rejected.

        Returns
        -------
        SimBlock
            Samples, force and ground truth; the pulses applied in this block.
        """
        n = _integer("n", n, 0)
        d = np.asarray(drive, dtype=float)
        if d.ndim == 0:
            d = np.full(n, float(d))
        elif d.shape != (n,):
            raise ConfigError(f"drive has shape {d.shape}: must be a number or an array of shape ({n},)")
        if np.isnan(d).any():
            raise ConfigError("drive contains NaN: must be numbers in [0, 1]")
        d = np.clip(d, 0.0, 1.0)

        c = self.params.n_channels
        out = {
            "emg": np.empty((n, c), dtype=np.float32),
            "force_n": np.empty(n),
            "fatigue": np.empty(n),
            "mwave_scale": np.empty(n),
            "freq_scale": np.empty(n),
            "f_stim_n": np.empty(n),
            "f_vol_n": np.empty(n),
        }
        timestamps = self._t0 + np.arange(self._n, self._n + n) / self._rate
        pulses: list[AppliedPulse] = []
        pos = 0
        while pos < n:
            m = min(n - pos, self._k_fat - self._n % self._k_fat)
            self._step(pos, m, d, out, pulses)
            pos += m
        return SimBlock(timestamps=timestamps, drive=d, pulses=tuple(pulses), **out)

    def _apply_pulses(self, start: int, stop: int, work: np.ndarray, pulses: list[AppliedPulse]) -> None:
        """Apply the queued pulses at samples ``start <= j < stop`` (one fatigue step)."""
        p = self.params
        while self._pending and self._pending[0][0] < stop:
            j, _, t_req, ch, amp, pw, late = self._pending.pop(0)
            q = amp * pw * 1e-3
            r = float(special.expit(p.slope_per_uc * (q - self._q50)))
            if self._last_pulse_index is None:
                big_r = 1.0
            else:
                gap = (j - self._last_pulse_index) / self._rate
                big_r = 1.0 + (self._km + p.r0_km_offset - 1.0) * math.exp(-gap / p.tau_c_s)
            self._last_pulse_index = j
            self._recent_idx = np.append(self._recent_idx, j)
            self._recent_w = np.append(self._recent_w, r * big_r)
            ptp = p.m_max_uv * self._gains * (r * self._mscale)
            if self._mwave_sigma > 0:  # log-normal, mean 1
                z = float(self._mwave_rng.standard_normal())
                ptp = ptp * math.exp(self._mwave_sigma * z - 0.5 * self._mwave_sigma**2)
            wave = self._mw_template * ptp[None, :] + self._art_kernel * (amp * self._art_gain)[None, :]
            o = j - start
            work[o : o + self._n_over] += wave
            pulses.append(
                AppliedPulse(
                    t=self._t0 + j / self._rate,
                    requested_t=t_req,
                    sample_index=j,
                    channel=ch,
                    amplitude_ma=amp,
                    pulse_width_us=pw,
                    charge_uc=q,
                    recruitment=r,
                    mwave_ptp_uv=ptp,
                    late=late,
                )
            )

    def _step(self, pos: int, m: int, drive: np.ndarray, out: dict, pulses: list[AppliedPulse]) -> None:
        """Generate ``m`` samples inside one fatigue step into ``out[...][pos:pos + m]``."""
        p = self.params
        c = p.n_channels
        s = self._n
        d = drive[pos : pos + m]
        sl = slice(pos, pos + m)

        # M-waves and artifacts: carried overlay of future samples plus the pulses of this step
        work = np.zeros((m + self._n_over, c))
        work[: self._n_over] = self._overlay
        self._apply_pulses(s, s + m, work, pulses)
        self._overlay = work[m:].copy()

        # voluntary EMG and amplifier noise; the stream has 2 * n_channels normals per sample whatever
        # the parameters, so the split of generate() calls cannot change which number goes where
        white = self._rng.standard_normal((m, 2 * c))
        # self._sos changes with fatigue (at step boundaries); the filter state is carried across
        y, self._zi = signal.sosfilt(self._sos, white[:, :c], axis=0, zi=self._zi)
        emg = y * (d[:, None] * self._vol_gain[None, :])
        emg += work[:m]
        emg += p.noise_rms_uv * white[:, c:]
        if p.powerline_uv > 0:
            idx = np.arange(s, s + m)
            emg += (p.powerline_uv * np.sin(2 * np.pi * p.powerline_hz * (idx / self._rate)))[:, None]
        out["emg"][sl] = emg

        # force: CN at sample-interval midpoints, summed over pulses in order (sequential accumulate, so
        # the sum does not depend on how many later pulses are in the list)
        if self._recent_idx.size:
            keep = self._recent_idx > s - self._cn_window
            self._recent_idx = self._recent_idx[keep]
            self._recent_w = self._recent_w[keep]
        if self._recent_idx.size:
            lag = np.arange(s, s + m)[:, None] - self._recent_idx[None, :]
            z = (lag + 0.5) / (self._rate * p.tau_c_s)
            terms = np.where((lag >= 0) & (z < _CN_WINDOW), z * np.exp(-z), 0.0) * self._recent_w[None, :]
            cn = np.add.accumulate(terms, axis=1)[:, -1]
        else:
            cn = np.zeros(m)
        x = cn / (self._km + cn)
        tau = self._tau1 + p.tau2_s * x
        a = np.exp(-self._dt / tau)
        b = self._A * x * tau * -np.expm1(-self._dt / tau)
        # F[k] = P_k (F_anchor + S_k), P_k = prod a, S_k = sum b_j / P_{j+1}, sequential from the anchor
        pk = np.multiply.accumulate(np.concatenate(([self._P], a)))
        sk = np.add.accumulate(np.concatenate(([self._S], b / pk[1:])))
        f_ding = pk * (self._f_anchor + sk)

        dlp, self._lp_zi = signal.lfilter(self._lp_b, self._lp_a, d, zi=self._lp_zi)
        f_vol = dlp * (p.voluntary_max_force_n * self._A / p.a_rest_n_per_s)
        f_stim = (1.0 - dlp) * f_ding[:m]
        force = f_vol + f_stim
        out["force_n"][sl] = force
        if p.force_noise_n > 0:
            out["force_n"][sl] += p.force_noise_n * self._force_rng.standard_normal(m)
        out["f_stim_n"][sl] = f_stim
        out["f_vol_n"][sl] = f_vol
        out["fatigue"][sl] = self._fatigue
        out["mwave_scale"][sl] = self._mscale
        out["freq_scale"][sl] = self._v
        self._fat_sum = float(np.add.accumulate(np.concatenate(([self._fat_sum], force)))[-1])
        self._P = float(pk[m])
        if m:
            self._drive_lp = float(dlp[-1])
        self._S = float(sk[m])
        self._n = s + m

        if self._n % self._k_fat == 0:
            self._f_anchor = float(f_ding[m])
            self._P = 1.0
            self._S = 0.0
            self._update_fatigue(self._fat_sum / self._k_fat)
            self._fat_sum = 0.0

    def _update_fatigue(self, f_mean: float) -> None:
        """Advance A, tau1, Km over one fatigue step with constant force ``f_mean`` (exact solution)."""
        p = self.params
        decay = math.exp(-self._k_fat * self._dt / p.tau_fat_s)
        gain = p.tau_fat_s * p.fatigue_rate_scale * f_mean

        def relax(value: float, rest: float, alpha: float) -> float:
            target = rest + gain * alpha
            return target + (value - target) * decay

        self._A = max(relax(self._A, p.a_rest_n_per_s, p.alpha_a_per_s2), 0.0)
        self._tau1 = relax(self._tau1, p.tau1_rest_s, p.alpha_tau1_per_n)
        self._km = relax(self._km, p.km_rest, p.alpha_km_per_s_n)
        self._set_fatigue_couplings()
