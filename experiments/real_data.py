"""Run the estimators on the real recordings in the shared data folder and summarise what they find.

    python -m experiments.real_data [--data DIR] [--out DIR]

- ``tscs_SingleCh_StimON.mat`` / ``..._StimOFF.mat`` (Verma et al. 2025): surface EMG during
  transcutaneous spinal stimulation at ~30 Hz and the same channel without it. Pulses are detected from
  their artifacts; volitional EMG during stimulation (each method) is compared with the stimulation-free
  stretches and the OFF recording.
- ``bsnb_emg_bursts.h5`` (PLUX biosignalsnotebooks): about nine cyclic biceps contractions at 1000 Hz, no
  stimulation: fixed windows; contractions found on the effort; median frequency per contraction and its
  trend (a fatiguing series should show a decline).

Units of the tSCS files are undocumented (treated as microvolts); the PLUX file is converted to millivolts
with its transfer function. Prints Markdown; with --out writes real_data.png there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from closedloop.errors import ConfigError
from closedloop.estimation.fatigue import smooth, trend
from closedloop.estimation.interval import EstimatorConfig
from closedloop.estimation.offline import estimate_recording
from closedloop.estimation.volitional import METHODS
from closedloop.types import StreamInfo

__all__ = ["data_dir", "load_bsnb", "load_tscs", "main"]


def data_dir(explicit: str | None = None) -> Path:
    """The shared data folder: ``--data``, ``$CLOSEDLOOP_DATA``, or ``../shared/data`` beside the repository."""
    for cand in (explicit, os.environ.get("CLOSEDLOOP_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    raise ConfigError("shared data folder not found: pass --data DIR or set CLOSEDLOOP_DATA")


def load_tscs(path: Path) -> tuple[np.ndarray, StreamInfo]:
    """A tSCS .mat file as ``(n, 1)`` samples (undocumented units, taken as microvolts) and its info."""
    from scipy.io import loadmat

    m = loadmat(str(path))
    key = "raw_on" if "raw_on" in m else "raw_off"
    x = np.asarray(m[key], dtype=float).ravel()[:, None]
    return x, StreamInfo(path.stem, "EMG", float(np.asarray(m["Fs"]).ravel()[0]), ("EMG",), ("uV",), str(path))


def load_bsnb(path: Path) -> tuple[np.ndarray, StreamInfo]:
    """The PLUX OpenSignals HDF5 file as ``(n, 1)`` millivolts: (adc / 2^16 - 1/2) x VCC 3 V / gain 1000."""
    import h5py

    with h5py.File(path, "r") as f:
        dev = next(iter(f.values()))
        adc = np.asarray(dev["raw"]["channel_3"], dtype=float).ravel()
    mv = (adc / 65536.0 - 0.5) * 3.0
    return mv[:, None], StreamInfo(path.stem, "EMG", 1000.0, ("biceps",), ("mV",), str(path))


def _contractions(t: np.ndarray, effort: np.ndarray, min_s: float = 0.3) -> list[tuple[float, float]]:
    """Stretches where the effort (mean over 0.3 s) exceeds 30 % of the way from its resting level (10th
    percentile) to its peaks (99th percentile), lasting at least ``min_s``."""
    e = smooth(t, effort, 0.3)
    lo, hi = np.nanpercentile(e, [10, 99])
    on = e > lo + 0.3 * (hi - lo)
    edges = np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0]))
    spans = [(t[a], t[min(b, t.size) - 1]) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return [(a, b) for a, b in spans if b - a >= min_s]


def tscs_summary(folder: Path) -> dict:
    on, info_on = load_tscs(folder / "tscs_SingleCh_StimON.mat")
    off, info_off = load_tscs(folder / "tscs_SingleCh_StimOFF.mat")
    out = {"methods": {}}
    base = estimate_recording(off, info_off, EstimatorConfig())
    out["off"] = {"effort": float(np.nanmedian(base.effort_uv)), "mdf": float(np.nanmedian(base.mdf_hz))}
    for method in METHODS:
        tab = estimate_recording(
            on, info_on, EstimatorConfig(method=method, mwave_window_s=(0.003, 0.015)), detect=True
        )
        stim = tab.has_pulse
        out["pulses"] = int(tab.pulse_samples.size)
        out["rate_hz"] = float(info_on.rate_hz / np.median(np.diff(tab.pulse_samples)))
        out["first_pulse_s"] = float(tab.pulse_samples[0] / info_on.rate_hz)
        out["methods"][method] = {
            "effort_stim": float(np.nanmedian(tab.effort_uv[stim])),
            "effort_free": float(np.nanmedian(tab.effort_uv[~stim])),
            "mdf_stim": float(np.nanmedian(tab.mdf_hz[stim])) if np.isfinite(tab.mdf_hz[stim]).any() else None,
            "mdf_free": float(np.nanmedian(tab.mdf_hz[~stim])),
            "mwave_ptp": float(np.nanmedian(tab.mwave_ptp_uv[stim])),
        }
        if method == "nlms":
            out["table"] = tab
    return out


def bsnb_summary(folder: Path) -> dict:
    x, info = load_bsnb(folder / "bsnb_emg_bursts.h5")
    tab = estimate_recording(x, info, EstimatorConfig(spectral_window_s=0.5), window_s=0.1)
    spans = _contractions(tab.t_s, tab.effort_uv)
    per = []
    for a, b in spans:
        sel = (tab.t_s >= a) & (tab.t_s <= b)
        per.append((a, b, float(np.nanmean(tab.effort_uv[sel])), float(np.nanmedian(tab.mdf_hz[sel]))))
    mids = np.array([(a + b) / 2 for a, b, *_ in per])
    mdfs = np.array([m for *_, m in per])
    return {"contractions": per, "mdf_trend": trend(mids, mdfs, smoothing_s=0.0), "table": tab}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.real_data", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    folder = data_dir(args.data)
    t = tscs_summary(folder)
    print(
        f"## tSCS (30 Hz): {t['pulses']} pulses detected from artifacts, {t['rate_hz']:.2f} Hz, first at "
        f"{t['first_pulse_s']:.1f} s\n"
    )
    print(
        "| method | effort during stimulation | effort, stimulation-free stretches | MDF during stimulation "
        "(Hz) | MDF stimulation-free (Hz) |"
    )
    print("|---|---|---|---|---|")
    for m, r in t["methods"].items():
        mdf = "n/a" if r["mdf_stim"] is None else f"{r['mdf_stim']:.1f}"
        print(f"| {m} | {r['effort_stim']:.1f} | {r['effort_free']:.1f} | {mdf} | {r['mdf_free']:.1f} |")
    print(
        f"\nStimOFF recording: effort {t['off']['effort']:.1f}, MDF {t['off']['mdf']:.1f} Hz "
        f"(units of the file, undocumented)\n"
    )
    b = bsnb_summary(folder)
    print(f"## PLUX biceps bursts: {len(b['contractions'])} contractions found\n")
    print("| contraction | from (s) | to (s) | mean effort (mV RMS) | median MDF (Hz) |")
    print("|---|---|---|---|---|")
    for i, (a, e, eff, mdf) in enumerate(b["contractions"], 1):
        print(f"| {i} | {a:.1f} | {e:.1f} | {eff / 1000:.3f} | {mdf:.1f} |")
    tr = b["mdf_trend"]
    if tr["first"] is not None:
        print(
            f"\nMDF from the first to the last contraction: {tr['first']:.1f} -> {tr['last']:.1f} Hz "
            f"({tr['change_pct']:+.1f} %), slope {tr['slope_per_min']:+.1f} Hz/min"
        )
    if args.out:
        _plot(Path(args.out), t, b)
    return 0


def _plot(out: Path, t: dict, b: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(12, 6))
    tab = t["table"]
    axes[0, 0].plot(tab.t_s, tab.effort_uv, lw=0.5)
    axes[0, 0].set_ylim(0, 3 * np.nanpercentile(tab.effort_uv, 99))
    axes[0, 0].set(title="tSCS: volitional EMG (nlms), stimulation from the marked line", ylabel="RMS (file units)")
    axes[0, 0].axvline(t["first_pulse_s"], color="tab:red", ls=":")
    axes[0, 1].plot(tab.t_s, tab.mdf_hz, lw=0.8)
    axes[0, 1].axvline(t["first_pulse_s"], color="tab:red", ls=":")
    axes[0, 1].set(title="tSCS: median frequency", ylabel="Hz")
    bt = b["table"]
    axes[1, 0].plot(bt.t_s, bt.effort_uv / 1000, lw=0.8)
    for a, e, *_ in b["contractions"]:
        axes[1, 0].axvspan(a, e, color="tab:orange", alpha=0.15)
    axes[1, 0].set(title="PLUX biceps: effort, contractions shaded", xlabel="s", ylabel="mV RMS")
    axes[1, 1].plot(bt.t_s, bt.mdf_hz, lw=0.8, label="MDF (0.5-s window)")
    mids = [(a + e) / 2 for a, e, *_ in b["contractions"]]
    axes[1, 1].plot(mids, [m for *_, m in b["contractions"]], "o-", label="per contraction")
    axes[1, 1].set(title="PLUX biceps: median frequency", xlabel="s", ylabel="Hz")
    axes[1, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "real_data.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
