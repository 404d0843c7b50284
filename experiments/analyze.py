"""``closedloop analyze recruitment``: the recruitment curve of a file of evoked responses.

    closedloop analyze recruitment FILE [--out DIR] [--channel NAME] [--m-window START_MS END_MS]
                                        [--h-window START_MS END_MS]

FILE is a waveform table (``.csv``: row 1 the intensities, column 1 the time in ms, one column per sweep;
see :func:`closedloop.analysis.recruitment.read_waveform_table`) or any recording
:func:`acquisition.files.open_recording` reads whose pulses carry their amplitudes (closedloop's
``session.xdf``); its sweeps are then the epochs around the pulses. The M-wave (and H-reflex) peak-to-peak
of every sweep is measured in its window (given, or found automatically), the Boltzmann curve is fitted to
the M-waves and the H-reflex is summarised. Written to the output directory:

- ``recruitment.json``: the fit (``m_wave``: ``m_max``, ``i50_ma``, ``k_ma``, ``slope_per_ma``,
  ``threshold_ma``, each with ``*_ci``), the H-reflex (``h_reflex``), one summary per intensity
  (``levels``), the windows and settings used;
- ``recruitment.csv``: one row per sweep (``sweep``, ``intensity_ma``, ``m_ptp``, ``h_ptp``);
- ``recruitment.png``: the sweeps with their windows, and the curve.
"""

from __future__ import annotations

import csv
import json
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.files import READABLE_EXTENSIONS, FileFormatError
from closedloop.analysis.recruitment import (
    DEFAULT_BLANK_MS,
    DEFAULT_EPOCH_MS,
    Sweeps,
    find_windows,
    fit_recruitment,
    level_summary,
    peak_to_peak,
    plot_recruitment,
    read_waveform_table,
    summarize_h_reflex,
    sweeps_from_recording,
)
from closedloop.errors import ConfigError

__all__ = ["analyze_recruitment", "load_sweeps", "summary_lines"]


def load_sweeps(
    path: str | PathLike[str],
    *,
    channel: str | None = None,
    epoch_ms: tuple[float, float] = DEFAULT_EPOCH_MS,
) -> tuple[Sweeps, str]:
    """The sweeps of ``path`` and its kind (``"waveform table"`` or ``"recording"``), by extension:
    ``.csv`` is a waveform table, every extension :func:`~acquisition.files.open_recording` reads a recording.
    """
    p = Path(path)
    name = p.name.lower()
    ext = ".fif.gz" if name.endswith(".fif.gz") else p.suffix.lower()
    if ext == ".csv":
        if channel is not None:
            raise ConfigError(f"--channel {channel}: a waveform table (.csv) holds one channel; leave it out")
        return read_waveform_table(p), "waveform table"
    if ext in READABLE_EXTENSIONS:
        return sweeps_from_recording(p, channel, epoch_ms), "recording"
    shown = f"'{ext}'" if ext else "(no extension)"
    raise FileFormatError(
        f"{path}: unknown file type {shown}; give a waveform table (.csv) or a recording "
        f"({' '.join(READABLE_EXTENSIONS)})"
    )


def analyze_recruitment(
    path: str | PathLike[str],
    out_dir: str | PathLike[str],
    *,
    channel: str | None = None,
    m_window_ms: tuple[float, float] | None = None,
    h_window_ms: tuple[float, float] | None = None,
    blank_ms: float = DEFAULT_BLANK_MS,
    epoch_ms: tuple[float, float] = DEFAULT_EPOCH_MS,
    threshold_fraction: float = 0.1,
    confidence: float = 0.95,
    n_boot: int = 0,
) -> dict[str, Any]:
    """Measure, fit and plot the recruitment curve of ``path``; write recruitment.json/.csv/.png to ``out_dir``.

    Parameters
    ----------
    path:
        A waveform table (.csv) or a recording with pulse amplitudes (see the module docstring).
    out_dir:
        Output directory (created if needed).
    channel:
        Recordings: the EMG channel (needed when the recording has several).
    m_window_ms, h_window_ms:
        ``(start, end)`` of the M and H windows in ms from the stimulus; None: found automatically.
    blank_ms:
        Automatic windows start no earlier than this (ms after the stimulus).
    epoch_ms:
        Recordings: the sweep around each pulse (ms from the pulse).
    threshold_fraction, confidence, n_boot:
        As for :func:`~closedloop.analysis.recruitment.fit_recruitment` (default: delta-method intervals).

    Returns
    -------
    dict
        The content of recruitment.json.

    Raises
    ------
    FileFormatError, ConfigError
        An unreadable file, no usable pulses, invalid windows, a curve that cannot be fitted.
    """
    sweeps, kind = load_sweeps(path, channel=channel, epoch_ms=epoch_ms)
    windows = find_windows(sweeps, m_window_ms=m_window_ms, h_window_ms=h_window_ms, blank_ms=blank_ms)
    m = peak_to_peak(sweeps.time_ms, sweeps.waveforms, windows.m_ms, "M")
    h = None if windows.h_ms is None else peak_to_peak(sweeps.time_ms, sweeps.waveforms, windows.h_ms, "H")
    fit = fit_recruitment(
        sweeps.intensity_ma, m, threshold_fraction=threshold_fraction, confidence=confidence, n_boot=n_boot
    )
    h_summary = None if h is None else summarize_h_reflex(sweeps.intensity_ma, h, fit.m_max)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "recruitment.json", "csv": out / "recruitment.csv", "png": out / "recruitment.png"}
    _write_csv(files["csv"], sweeps.intensity_ma, m, h)
    plot_recruitment(
        fit,
        sweeps.intensity_ma,
        m,
        files["png"],
        h_ptp=h,
        h_summary=h_summary,
        sweeps=sweeps,
        windows=windows,
        unit=sweeps.unit,
        title=f"{Path(path).name}: recruitment curve",
    )
    result: dict[str, Any] = {
        "file": str(path),
        "kind": kind,
        "channel": sweeps.channel,
        "unit": sweeps.unit,
        "n_sweeps": sweeps.n_sweeps,
        "intensity_range_ma": [float(sweeps.intensity_ma.min()), float(sweeps.intensity_ma.max())],
        "settings": {
            "m_window_ms": None if m_window_ms is None else [float(v) for v in m_window_ms],
            "h_window_ms": None if h_window_ms is None else [float(v) for v in h_window_ms],
            "blank_ms": float(blank_ms),
            "epoch_ms": [float(v) for v in epoch_ms] if kind == "recording" else None,
            "threshold_fraction": float(threshold_fraction),
            "confidence": float(confidence),
            "n_boot": int(n_boot),
            "measure": "peak-to-peak within the window",
        },
        "windows": windows.as_dict(),
        "m_wave": fit.as_dict(),
        "h_reflex": None if h_summary is None else h_summary.as_dict(),
        "levels": level_summary(sweeps.intensity_ma, m, h),
        "notes": list(sweeps.notes),
        "outputs": {k: str(v) for k, v in files.items()},
    }
    files["json"].write_text(json.dumps(result, indent=2) + "\n")
    return result


def _write_csv(path: Path, intensity: np.ndarray, m: np.ndarray, h: np.ndarray | None) -> None:
    h_col = [""] * m.size if h is None else [repr(float(v)) for v in h]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sweep", "intensity_ma", "m_ptp", "h_ptp"])
        w.writerows(zip(range(1, m.size + 1), map(repr, intensity.tolist()), map(repr, m.tolist()), h_col, strict=True))


def _ci(d: dict[str, Any], key: str, fmt: str = ".4g") -> str:
    v, ci = d[key], d[f"{key}_ci"]
    if v is None:
        return "n/a"
    if ci[0] is None or ci[1] is None:
        return f"{v:{fmt}}"
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _window(w: dict[str, Any], which: str) -> str:
    a, b = w[f"{which}_window_ms"]
    return f"{a:.2f}-{b:.2f} ms ({'auto' if w[f'{which}_window_auto'] else 'given'})"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What ``closedloop analyze recruitment`` prints: the fit, the H-reflex and where the files went."""
    m, w, u = result["m_wave"], result["windows"], result["unit"]
    lo, hi = result["intensity_range_ma"]
    n_levels = m["n_levels"]
    ci = f"{100 * m['confidence']:.0f} % CI, {m['ci_method']}"
    lines = [
        f"closedloop analyze recruitment: {Path(result['file']).name} ({result['kind']}"
        + (f", channel {result['channel']}" if result["channel"] else "")
        + f"): {result['n_sweeps']} sweeps at {n_levels} intensities, {lo:g}-{hi:g} mA",
        f"  M window {_window(w, 'm')}"
        + (f", H window {_window(w, 'h')}" if w["h_window_ms"] else f", no H window ({w['h_reason']})"),
        f"  M-wave ({ci}; R^2 {m['r2']:.3f}, RMSE {m['rmse']:.3g} {u}):",
        f"    m_max      {_ci(m, 'm_max')} {u}",
        f"    I50        {_ci(m, 'i50_ma')} mA",
        f"    k          {_ci(m, 'k_ma')} mA",
        f"    slope      {_ci(m, 'slope_per_ma')} {u}/mA (at I50)",
        f"    threshold  {_ci(m, 'threshold_ma')} mA ({100 * m['threshold_fraction']:g} % of m_max)",
    ]
    lines += [f"    note: {n}" for n in m["notes"]]
    h = result["h_reflex"]
    if h is not None:
        ratio = "n/a" if h["h_max_over_m_max"] is None else f"{h['h_max_over_m_max']:.3f}"
        lines.append(
            f"  H-reflex: h_max {h['h_max']:.3g} {u} at {h['h_max_intensity_ma']:g} mA (largest mean), "
            f"h_max/m_max {ratio}"
        )
        if h["fit"] is not None:
            f = h["fit"]
            lines.append(
                f"    two-sigmoid fit: maximum {f['h_max_fit']:.3g} {u} at {f['i_h_max_ma']:.3g} mA (R^2 {f['r2']:.3f})"
            )
        elif h["note"]:
            lines.append(f"    no H fit: {h['note']}")
    lines += [f"  note: {n}" for n in result["notes"]]
    o = result["outputs"]
    lines += [f"  results:   {o['json']}", f"  per sweep: {o['csv']}", f"  figure:    {o['png']}"]
    return lines
