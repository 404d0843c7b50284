"""The session report: report.html with PNG plots, built from session.xdf and summary.json.

The report reads the recording back with pyxdf (so it doubles as a check that the file is readable) and,
for simulated sessions, compares the estimates with the simulator's ground truth.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError

__all__ = ["SessionData", "build_report", "load_session", "truth_comparison"]


@dataclass
class StreamData:
    """One stream of a recording: values ``(n, n_channels)``, timestamps ``(n,)`` and channel labels."""

    name: str
    values: np.ndarray
    timestamps: np.ndarray
    labels: list[str]
    units: list[str]
    rate_hz: float

    def channel(self, label: str) -> np.ndarray:
        return self.values[:, self.labels.index(label)]


@dataclass
class SessionData:
    """A recorded session: streams by name and the summary."""

    streams: dict[str, StreamData]
    summary: dict
    t0: float

    def __getitem__(self, name: str) -> StreamData:
        return self.streams[name]

    def get(self, name: str) -> StreamData | None:
        return self.streams.get(name)


def load_session(session_dir: str | Path) -> SessionData:
    """Read ``session.xdf`` (with pyxdf) and ``summary.json`` from a session directory."""
    import pyxdf

    d = Path(session_dir)
    xdf = d / "session.xdf"
    if not xdf.exists():
        raise ClosedLoopError(f"{xdf}: no recording here (session.xdf is missing)")
    try:
        streams, _ = pyxdf.load_xdf(str(xdf), dejitter_timestamps=False, synchronize_clocks=False)
    except Exception as exc:
        raise ClosedLoopError(f"{xdf}: cannot read the recording: {exc}") from exc
    out = {}
    for s in streams:
        info = s["info"]
        name = info["name"][0]
        chans = info["desc"][0]["channels"][0]["channel"] if info.get("desc") and info["desc"][0] else []
        labels = [c["label"][0] for c in chans]
        units = [(c.get("unit") or [None])[0] or "" for c in chans]
        if info["channel_format"][0] == "string":
            values = np.asarray(s["time_series"], dtype=object).reshape(-1, max(1, len(labels)))
            out[name] = StreamData(name, values, np.asarray(s["time_stamps"], dtype=float), labels, units, 0.0)
            continue
        values = np.asarray(s["time_series"], dtype=float)
        if values.ndim == 1:
            values = values.reshape(-1, max(1, len(labels)))
        out[name] = StreamData(
            name, values, np.asarray(s["time_stamps"], dtype=float), labels, units, float(info["nominal_srate"][0])
        )
    summary_path = d / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    emg = out.get("EMG")
    t0 = summary.get("t_start_lsl")
    if t0 is None:
        t0 = float(emg.timestamps[0]) if emg is not None and emg.timestamps.size else 0.0
    return SessionData(out, summary, t0)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return math.nan
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def truth_comparison(data: SessionData) -> dict:
    """Estimates against the simulator's ground truth (empty if the session was not simulated).

    ``effort_drive_r``: Pearson r between the smoothed volitional effort and the true drive at the same
    times, over all intervals. ``mwave_rel_error_median``: median relative error of the estimated M-wave
    peak-to-peak (control channel) against the true evoked peak-to-peak, over pulses whose true M-wave
    exceeds 100 uV.
    """
    truth, est = data.get("GroundTruth"), data.get("Estimates")
    if truth is None or est is None or truth.values.shape[0] < 2 or est.values.shape[0] < 3:
        return {}
    t_est = est.timestamps
    drive = np.interp(t_est, truth.timestamps, truth.channel("drive"))
    out = {
        "effort_drive_r": _pearson(est.channel("effort_smooth"), drive),
        "effort_drive_r_unsmoothed": _pearson(est.channel("effort"), drive),
    }
    ptp = est.channel("mwave_ptp")
    has = np.isfinite(ptp)
    if has.any():
        # the truth sample right after each pulse carries that pulse's true M-wave
        idx = np.searchsorted(truth.timestamps, t_est[has], side="left")
        idx = np.clip(idx, 0, truth.timestamps.size - 1)
        true_ptp = truth.channel("mwave_ptp_true_uv")[idx]
        big = true_ptp > 100.0
        if big.any():
            rel = np.abs(ptp[has][big] - true_ptp[big]) / true_ptp[big]
            out["mwave_rel_error_median"] = float(np.median(rel))
            out["mwave_pulses_compared"] = int(big.sum())
    return out


#: Fatigue indices summarised in summary.json under "fatigue" (Estimates stream channel names).
FATIGUE_INDICES = ("mwave_ptp_rel", "mwave_area_rel", "mdf_hz", "mnf_hz", "fi_nsm5")


def fatigue_summary(data: SessionData, smoothing_s: float = 5.0) -> dict:
    """Trend of each fatigue index of the control channel: first, last, change %, slope per minute."""
    from closedloop.estimation.fatigue import trend

    est = data.get("Estimates")
    if est is None or est.values.shape[0] < 2:
        return {}
    return {
        name: trend(est.timestamps, est.channel(name), smoothing_s) for name in FATIGUE_INDICES if name in est.labels
    }


def _fmt_ms(stats: dict | None) -> str:
    if not stats or stats.get("median") is None:
        return "n/a"
    return f"median {stats['median']:.3f} ms, p99 {stats['p99']:.3f} ms, max {stats['max']:.3f} ms (n={stats['n']})"


def build_report(session_dir: str | Path, extra: dict | None = None) -> dict:
    """Write report.html and its PNG plots into ``session_dir``; return the truth comparison metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(session_dir)
    data = load_session(d)
    metrics = truth_comparison(data)
    fatigue = fatigue_summary(data)
    s = data.summary
    t0 = data.t0
    emg, pulses, est, force, truth = (data.get(k) for k in ("EMG", "Pulses", "Estimates", "Force", "GroundTruth"))
    images: list[tuple[str, str]] = []

    # 1. overview
    panels = [
        p for p, have in (("emg", emg), ("intensity", pulses), ("effort", est), ("force", force)) if have is not None
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.3 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "emg" and emg is not None:
            ax.plot(emg.timestamps - t0, emg.values[:, 0] * _to_uv(emg.units[0]), lw=0.3, color="k")
            ax.set_ylabel(f"{emg.labels[0]} (uV)")
            if pulses is not None and pulses.values.size:
                ymax = np.nanmax(np.abs(emg.values[:, 0] * _to_uv(emg.units[0]))) if emg.values.size else 1
                ax.plot(
                    pulses.timestamps - t0,
                    np.full(pulses.timestamps.size, ymax * 1.05),
                    "|",
                    color="tab:red",
                    ms=4,
                    label="pulses",
                )
                ax.legend(loc="upper right", fontsize=8)
            ax.set_title("EMG (raw) with stimulation pulses")
        elif panel == "intensity":
            amps = pulses.channel("amplitude_ma") if pulses is not None and pulses.values.size else np.empty(0)
            if amps.size and not np.isfinite(amps).any():  # a recording's pulses without amplitudes: their rate
                tp = pulses.timestamps - t0  # type: ignore[union-attr]
                if tp.size > 1:
                    ax.plot(tp[1:], 1.0 / np.maximum(np.diff(tp), 1e-9), ".", ms=2, color="tab:red")
                ax.set_ylabel("pulse rate (Hz)")
                ax.set_title(f"{tp.size} pulses (the recording holds no amplitudes): rate from one to the next")
            else:
                if amps.size:
                    ax.plot(pulses.timestamps - t0, amps, ".", ms=2, color="tab:red")  # type: ignore[union-attr]
                ax.set_ylabel("pulse (mA)")
                lim = s.get("limits", {}).get("max_amplitude_ma")
                if lim:
                    ax.axhline(lim, ls="--", color="gray", lw=0.8, label=f"limit {lim:g} mA")
                    ax.legend(loc="upper right", fontsize=8)
        elif panel == "effort" and est is not None:
            pct = est.channel("effort_pct_mvc")
            if np.isfinite(pct).any():
                ax.plot(est.timestamps - t0, pct, lw=0.8, label="estimated effort (% MVC)")
                ax.set_ylabel("% MVC")
            else:
                ax.plot(est.timestamps - t0, est.channel("effort_smooth"), lw=0.8, label="estimated effort (uV)")
                ax.set_ylabel("effort (uV)")
            if truth is not None:
                ax2 = ax.twinx() if not np.isfinite(pct).any() else ax
                scale = 1.0 if ax2 is not ax else 100.0
                r = metrics.get("effort_drive_r", math.nan)
                ax2.plot(
                    truth.timestamps - t0,
                    truth.channel("drive") * scale,
                    lw=0.8,
                    color="tab:green",
                    label=f"true drive (x100), r = {r:.3f}",
                )
            ax.legend(loc="upper right", fontsize=8)
            ax.set_title(
                "volitional effort between pulses" + (" vs the participant's true drive" if truth is not None else "")
            )
        elif panel == "force" and force is not None:
            ax.plot(force.timestamps - t0, force.values[:, 0], lw=0.6, color="tab:purple")
            ax.set_ylabel("force (N)")
    axes[-1].set_xlabel("session time (s)")
    fig.tight_layout()
    fig.savefig(d / "overview.png", dpi=110)
    plt.close(fig)
    images.append(("overview.png", "Session overview"))

    # 2. a zoom on stimulated EMG, around the strongest pulse
    if emg is not None and pulses is not None and pulses.values.shape[0] >= 4:
        k = int(np.argmax(pulses.channel("amplitude_ma")))
        tz = pulses.timestamps[k]
        sel = (emg.timestamps >= tz - 0.02) & (emg.timestamps <= tz + 0.2)
        win = (s.get("estimator") or {}).get("mwave_window_s") or [0.003, 0.02]
        tp_sel = pulses.timestamps[(pulses.timestamps >= tz - 0.03) & (pulses.timestamps <= tz + 0.2)]
        rel = emg.timestamps[sel][:, None] - tp_sel[None, :]
        in_artifact = ((rel >= 0) & (rel < win[0])).any(axis=1)
        fig, ax = plt.subplots(figsize=(11, 3.2))
        peak = 1.0
        for c in range(min(emg.values.shape[1], 4)):
            y = emg.values[sel, c] * _to_uv(emg.units[c])
            ax.plot((emg.timestamps[sel] - tz) * 1e3, y, lw=0.7, label=emg.labels[c])
            if (~in_artifact).any():
                peak = max(peak, float(np.max(np.abs(y[~in_artifact]))))
        for tp in tp_sel:
            ax.axvline((tp - tz) * 1e3, color="tab:red", lw=0.6, ls=":")
            ax.axvspan((tp - tz + win[0]) * 1e3, (tp - tz + win[1]) * 1e3, color="tab:orange", alpha=0.12)
        ax.set_ylim(-1.3 * peak, 1.3 * peak)
        ax.set_xlim(-20, 200)
        ax.set_xlabel("time from the strongest pulse (ms)")
        ax.set_ylabel("EMG (uV)")
        ax.set_title(
            "Stimulated EMG (artifacts clipped): M-wave windows shaded, volitional EMG in between; "
            "dotted lines are pulses",
            fontsize=10,
        )
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(d / "emg_zoom.png", dpi=110)
        plt.close(fig)
        images.append(("emg_zoom.png", "Stimulated EMG, zoomed"))

    # 3. M-wave over time
    if est is not None and np.isfinite(est.channel("mwave_ptp")).any():
        fig, ax = plt.subplots(figsize=(11, 3))
        ptp = est.channel("mwave_ptp")
        has = np.isfinite(ptp)
        ax.plot(est.timestamps[has] - t0, ptp[has], ".", ms=3, label="estimated M-wave p-p")
        if truth is not None:
            ax.plot(
                truth.timestamps - t0,
                truth.channel("mwave_ptp_true_uv"),
                lw=0.6,
                color="tab:green",
                label="true M-wave p-p of the last pulse",
            )
        ax.set_xlabel("session time (s)")
        ax.set_ylabel("M-wave p-p (uV)")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title("M-wave amplitude per pulse")
        fig.tight_layout()
        fig.savefig(d / "mwave.png", dpi=110)
        plt.close(fig)
        images.append(("mwave.png", "M-wave amplitude over time"))

    # 4. fatigue indices
    if est is not None and "mdf_hz" in est.labels and np.isfinite(est.channel("mdf_hz")).any():
        from closedloop.estimation.fatigue import smooth

        fig, axes2 = plt.subplots(1, 2, figsize=(11, 3))
        te = est.timestamps - t0
        ax = axes2[0]
        ax.plot(te, est.channel("mdf_hz"), lw=0.5, alpha=0.5, label="median frequency")
        ax.plot(te, smooth(te, est.channel("mdf_hz"), 5.0), lw=1.2, label="5-s mean")
        if truth is not None and "mdf_true_hz" in truth.labels:
            ax.plot(truth.timestamps - t0, truth.channel("mdf_true_hz"), lw=0.8, color="tab:green", label="true")
        ax.set_xlabel("session time (s)")
        ax.set_ylabel("Hz")
        ax.set_title("Volitional EMG median frequency")
        ax.legend(fontsize=8)
        ax = axes2[1]
        rel = est.channel("mwave_ptp_rel")
        ok = np.isfinite(rel)
        ax.plot(te[ok], rel[ok], ".", ms=2, label="M-wave p-p / first pulses")
        ax.plot(te[ok], smooth(te[ok], rel[ok], 5.0), lw=1.2, label="5-s mean")
        ax.set_xlabel("session time (s)")
        ax.set_title("M-wave fatigue index (constant intensity only)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(d / "fatigue.png", dpi=110)
        plt.close(fig)
        images.append(("fatigue.png", "Fatigue indices"))

    # 5. latency
    lat = est.channel("decision_latency_ms") if est is not None else np.array([])
    lat = lat[np.isfinite(lat)]
    if lat.size:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(lat, bins=60, color="tab:blue")
        ax.axvline(s.get("deadline_s", 0.005) * 1e3, color="tab:red", ls="--", label="deadline")
        ax.set_xlabel("decision latency (ms)")
        ax.set_ylabel("pulses")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(d / "latency.png", dpi=110)
        plt.close(fig)
        images.append(("latency.png", "Decision latency per pulse"))

    # 6. what the protocol asked for (recruitment fit, fatigue decline, voluntary activation, ...)
    analysis = _protocol_analysis(data, d)
    images = analysis.get("images", []) + images
    fat_rows = {f"fatigue: {k}": _trend_text(v) for k, v in fatigue.items() if v.get("n")}
    _write_html(d, s, metrics, images, {**analysis.get("rows", {}), **fat_rows, **(extra or {})})
    # the numbers go into summary.json too
    s = dict(s)
    if metrics:
        s["truth_comparison"] = metrics
    if analysis:
        s["results"] = analysis.get("results", {})
        if analysis.get("truth"):
            s["truth"] = analysis["truth"]
    s["fatigue"] = fatigue
    s.setdefault("files", {})["report"] = "report.html"
    from closedloop.pipeline import write_summary

    write_summary(d / "summary.json", s)
    return metrics


def _protocol_analysis(data: SessionData, d: Path) -> dict:
    """The protocol's own analysis; a failure is reported in the report and summary, never raised."""
    from closedloop.analysis.session import analyze_session

    try:
        return analyze_session(data, d)
    except ClosedLoopError as exc:
        return {"results": {"error": str(exc)}, "rows": {"analysis": f"failed: {exc}"}}


def _trend_text(t: dict) -> str:
    if t.get("first") is None:
        return "n/a"
    return (
        f"{t['first']:.4g} -> {t['last']:.4g} ({t['change_pct']:+.1f} %), slope {t['slope_per_min']:+.4g}/min "
        f"(n={t['n']})"
    )


def _to_uv(unit: str) -> float:
    from closedloop.types import unit_to_volts

    try:
        return unit_to_volts(unit) * 1e6
    except ClosedLoopError:
        return 1.0


def _write_html(d: Path, s: dict, metrics: dict, images: list[tuple[str, str]], extra: dict) -> None:
    def row(k: str, v: object) -> str:
        return f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"

    lim = s.get("limits", {})
    proto = s.get("protocol") or {}
    rows = [
        row("protocol", f"{proto.get('name')}: {proto.get('description', '')}") if proto else "",
        row(
            "phases",
            "; ".join(
                f"{p['name']} {p['duration_s']:g} s {p['mode']}"
                + (f" ({p['instruction']})" if p.get("instruction") else "")
                for p in proto.get("phases", [])
            ),
        )
        if proto.get("phases")
        else "",
        row("simulated participant", "yes (its true values are in summary.json under truth)")
        if s.get("simulation")
        else "",
        row("status", s.get("status", "?") + (f" ({s['error']})" if s.get("error") else "")),
        row("started", s.get("started_at", "")),
        row("duration", f"{s.get('duration_s', 0):.1f} s"),
        row("EMG stream", _stream_text(s.get("stream"))),
        row("pulses delivered", s.get("pulses")),
        row("largest pulse", f"{s.get('max_amplitude_ma', 0):.2f} mA"),
        row("safety limits", ", ".join(f"{k} = {v}" for k, v in lim.items())),
        row("decision latency", _fmt_ms(s.get("decision_latency_ms"))),
        row("end-to-end latency", _fmt_ms(s.get("e2e_latency_ms"))),
        row("deadline misses", f"{s.get('deadline_misses', 0)} (deadline {s.get('deadline_s', 0) * 1e3:g} ms)"),
        row(
            "MVC reference (uV)",
            ", ".join("none" if v is None else f"{v:.1f}" for v in s.get("mvc_uv") or []) or "not calibrated",
        ),
        row("safety events", "; ".join(f"{e['kind']}: {e['reason']}" for e in s.get("safety_events", [])[:20])),
    ]
    for k, v in metrics.items():
        rows.append(row(f"truth: {k}", f"{v:.4f}" if isinstance(v, float) else v))
    for k, v in extra.items():
        rows.append(row(k, v))
    imgs = "\n".join(f'<h2>{html.escape(t)}</h2><img src="{f}" alt="{html.escape(t)}">' for f, t in images)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>closedloop session report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}} th{{text-align:left;padding-right:1em}}
td,th{{vertical-align:top;border-bottom:1px solid #ddd;padding:3px}} img{{max-width:100%}}</style></head>
<body><h1>closedloop session report</h1>
<table>{"".join(rows)}</table>
{imgs}
<h2>Files</h2><ul>
<li><code>session.xdf</code>: every stream (EMG, Pulses, Estimates, and Force/GroundTruth when simulated);
open with pyxdf.</li>
<li><code>estimates.csv</code>: one row per channel per interval.</li>
<li><code>summary.json</code>: the numbers above, the configuration and the safety events.</li></ul>
</body></html>
"""
    (d / "report.html").write_text(page, encoding="utf-8")


def _stream_text(stream: dict | None) -> str:
    if not stream:
        return "n/a"
    return (
        f"{stream['name']} ({len(stream['channels'])} ch at {stream['rate_hz']:g} Hz, source_id {stream['source_id']})"
    )
