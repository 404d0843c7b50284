"""What a protocol's report computes from its recorded session, and the simulator's truth beside it.

:func:`analyze_session` reads ``[analysis] kind`` from the session's summary (``protocol.analysis``) and
returns ``results`` (the measured numbers), ``truth`` (the same keys from the simulated participant's known
parameters and ground-truth stream, for simulated sessions), plots and table rows for report.html.

- ``recruitment``: M-wave (control channel) of every pulse against its delivered intensity; Boltzmann fit
  (:mod:`closedloop.analysis.recruitment`). Truth: the simulator's sigmoid in current at the session's
  pulse width, M-max at the fatigue of the sweep.
- ``fatigue``: M-wave of the pulses at the test's intensity (the most frequent one) and the volitional
  median frequency, each relative to its start: decline slope (% per minute), change, time to a
  ``decline_fraction`` decline (:func:`closedloop.estimation.fatigue.decline`). Truth: the same
  computation on the true M-wave of every pulse and the true median frequency.
- ``twitch``: voluntary activation by twitch interpolation on the force recording
  (:mod:`closedloop.analysis.twitch`). Truth: the participant's drive at the superimposed doublets.
- ``assist``: effort, intensity and force; with a PID on force, its tracking error.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["analyze_session"]


def analyze_session(data, out_dir: str | Path) -> dict:
    """Results, truth, images ``[(file, title)]`` and rows ``{label: text}`` for the session's analysis kind.

    Returns an empty dict when the session has no protocol analysis."""
    s = data.summary
    proto = s.get("protocol") or {}
    kind = (proto.get("analysis") or {}).get("kind")
    if kind in (None, "none"):
        return {}
    settings = proto.get("analysis") or {}
    fn = {"recruitment": _recruitment, "fatigue": _fatigue, "twitch": _twitch, "assist": _assist}[kind]
    out = fn(data, settings, Path(out_dir))
    out["kind"] = kind
    return out


# -- helpers ---------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sim(data) -> dict | None:
    return data.summary.get("simulation")


def _muscle(data):
    """The simulated muscle as it was configured (None for live sessions)."""
    sim = _sim(data)
    if not sim:
        return None
    from acquisition.simulator.muscle import MuscleParams, VirtualMuscle

    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in sim["muscle"].items()}
    return VirtualMuscle(MuscleParams(**kw))


def _control_channel(data) -> int:
    return int((data.summary.get("estimator") or {}).get("control_channel", 0))


def _truth_at_pulses(truth, t_pulses: np.ndarray, label: str) -> np.ndarray:
    """The ground-truth value of ``label`` carried by the first truth sample at or after each pulse."""
    idx = np.clip(np.searchsorted(truth.timestamps, t_pulses, side="left"), 0, truth.timestamps.size - 1)
    return truth.channel(label)[idx]


def _in_control(data, t: np.ndarray) -> np.ndarray:
    """Which of the LSL times ``t`` fall in a control phase of the session."""
    phases = (data.summary.get("config") or {}).get("phases") or []
    rel = t - data.t0
    out = np.zeros(t.shape, dtype=bool)
    start = 0.0
    for ph in phases:
        end = start + float(ph["duration_s"])
        if ph.get("mode") == "control":
            out |= (rel >= start) & (rel < end)
        start = end
    return out


def _rel_close(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return abs(a - b) / abs(b)


# -- recruitment -----------------------------------------------------------------------------------------
def _recruitment(data, settings: dict, d: Path) -> dict:
    from closedloop.analysis.recruitment import fit_recruitment, plot_recruitment

    est = data["Estimates"]
    amp, ptp = est.channel("amplitude_ma"), est.channel("mwave_ptp")
    ok = np.isfinite(amp) & np.isfinite(ptp) & (amp > 0)
    frac = float(settings.get("threshold_fraction", 0.1))
    fit = fit_recruitment(amp[ok], ptp[ok], threshold_fraction=frac)
    fd = fit.as_dict()
    results = {
        "threshold_ma": fd["threshold_ma"],
        "threshold_ma_ci": fd["threshold_ma_ci"],
        "i50_ma": fd["i50_ma"],
        "i50_ma_ci": fd["i50_ma_ci"],
        "k_ma": fd["k_ma"],
        "k_ma_ci": fd["k_ma_ci"],
        "m_max_uv": fd["m_max"],
        "m_max_uv_ci": fd["m_max_ci"],
        "slope_uv_per_ma": fd["slope_per_ma"],
        "r2": fd.get("r2"),
        "n_pulses": int(ok.sum()),
        "threshold_fraction": frac,
    }
    truth = {}
    muscle = _muscle(data)
    if muscle is not None:
        p = muscle.params
        pw = float(data.summary["config"]["pulse_width_us"])
        c = _control_channel(data)
        gt = data.get("GroundTruth")
        fatigue = 0.0
        if gt is not None:
            t_p = est.timestamps[ok]
            fatigue = float(np.mean(_truth_at_pulses(gt, t_p, "fatigue"))) if t_p.size else 0.0
        q_thr = p.q50_uc - math.log(1.0 / frac - 1.0) / p.slope_per_uc
        k = 1000.0 / (pw * p.slope_per_uc)
        m_max = muscle.true_mwave_ptp_uv(1e6, fatigue, c)
        truth = {
            "threshold_ma": q_thr * 1000.0 / pw,
            "i50_ma": p.q50_uc * 1000.0 / pw,
            "k_ma": k,
            "m_max_uv": m_max,
            "slope_uv_per_ma": m_max / (4.0 * k),
        }
    png = d / "recruitment.png"
    plot_recruitment(fit, amp[ok], ptp[ok], png, title="Recruitment curve (M-wave vs pulse intensity)", unit="uV")
    rows = {
        "recruitment: threshold": _ci_text(results["threshold_ma"], results["threshold_ma_ci"], "mA"),
        "recruitment: I50": _ci_text(results["i50_ma"], results["i50_ma_ci"], "mA"),
        "recruitment: M-max": _ci_text(results["m_max_uv"], results["m_max_uv_ci"], "uV"),
    }
    for key in ("threshold_ma", "m_max_uv", "i50_ma"):
        if key in truth:
            err = _rel_close(results[key], truth[key])
            rows[f"truth: {key}"] = f"{truth[key]:.4g} (estimate off by {100 * err:.1f} %)" if err is not None else ""
    return {"results": results, "truth": truth, "images": [(png.name, "Recruitment curve")], "rows": rows}


def _ci_text(v, ci, unit: str) -> str:
    if v is None:
        return "n/a"
    if ci and ci[0] is not None:
        return f"{v:.4g} {unit} (95 % CI {ci[0]:.4g} to {ci[1]:.4g})"
    return f"{v:.4g} {unit}"


# -- fatigue test ----------------------------------------------------------------------------------------
def _test_intensity(amp: np.ndarray) -> float:
    """The intensity of a fatigue test: the most frequent delivered amplitude (ramps excluded)."""
    a = np.round(amp[np.isfinite(amp) & (amp > 0)], 2)
    if a.size == 0:
        return math.nan
    vals, counts = np.unique(a, return_counts=True)
    return float(vals[np.argmax(counts)])


def _fatigue(data, settings: dict, d: Path) -> dict:
    from closedloop.estimation.fatigue import decline, smooth

    est = data["Estimates"]
    t0 = data.t0
    frac = float(settings.get("decline_fraction", 0.1))
    sm = float(settings.get("smoothing_s", 5.0))
    amp, ptp, mdf = est.channel("amplitude_ma"), est.channel("mwave_ptp"), est.channel("mdf_hz")
    level = _test_intensity(amp)
    test = _in_control(data, est.timestamps)  # rest and calibration phases are not the test
    at_level = test & np.isfinite(ptp) & (np.abs(amp - level) <= 0.02 * level)
    t_m = est.timestamps[at_level]
    kw = dict(decline_fraction=frac, smoothing_s=sm)
    m = decline(t_m, ptp[at_level], **kw)
    f_ok = test & np.isfinite(mdf)
    f = decline(est.timestamps[f_ok], mdf[f_ok], **kw)
    results = {
        "intensity_ma": level,
        "mwave_decline_pct_per_min": m["slope_pct_per_min"],
        "mwave_change_pct": m["change_pct"],
        "mwave_time_to_decline_s": m["time_to_decline_s"],
        "mwave_reference_uv": m["reference"],
        "mdf_decline_pct_per_min": f["slope_pct_per_min"],
        "mdf_change_pct": f["change_pct"],
        "mdf_time_to_decline_s": f["time_to_decline_s"],
        "mdf_reference_hz": f["reference"],
        "decline_fraction": frac,
        "n_pulses": int(at_level.sum()),
    }
    truth = {}
    gt = data.get("GroundTruth")
    tm_true = tf_true = None
    if _sim(data) and gt is not None:
        true_m = _truth_at_pulses(gt, t_m, "mwave_ptp_true_uv")
        tm_true = decline(t_m, true_m, **kw)
        true_f = np.interp(est.timestamps[f_ok], gt.timestamps, gt.channel("mdf_true_hz"))
        tf_true = decline(est.timestamps[f_ok], true_f, **kw)
        truth = {
            "mwave_decline_pct_per_min": tm_true["slope_pct_per_min"],
            "mwave_change_pct": tm_true["change_pct"],
            "mwave_time_to_decline_s": tm_true["time_to_decline_s"],
            "mwave_reference_uv": tm_true["reference"],
            "mdf_decline_pct_per_min": tf_true["slope_pct_per_min"],
            "mdf_change_pct": tf_true["change_pct"],
            "mdf_time_to_decline_s": tf_true["time_to_decline_s"],
            "mdf_reference_hz": tf_true["reference"],
        }
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, t, v, ref, title, true_v in (
        (axes[0], t_m, ptp[at_level], m["reference"], f"M-wave p-p at {level:g} mA", "mwave_ptp_true_uv"),
        (axes[1], est.timestamps[f_ok], mdf[f_ok], f["reference"], "volitional EMG median frequency", "mdf_true_hz"),
    ):
        if ref is None or t.size == 0:
            ax.set_title(f"{title}: not enough data")
            continue
        ts = t - t0
        ax.plot(ts, 100 * v / ref, ".", ms=2, alpha=0.5, label="measured")
        ax.plot(ts, 100 * smooth(ts, v / ref, sm), lw=1.4, label=f"{sm:g}-s mean")
        if truth:
            tv = (
                _truth_at_pulses(gt, t, true_v)
                if true_v == "mwave_ptp_true_uv"
                else np.interp(t, gt.timestamps, gt.channel(true_v))
            )
            ax.plot(ts, 100 * tv / np.mean(tv[:5]), lw=1.0, color="tab:green", label="true")
        ax.axhline(100 * (1 - frac), ls="--", color="gray", lw=0.8, label=f"-{100 * frac:g} %")
        ax.set_xlabel("session time (s)")
        ax.set_ylabel("% of start")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = d / "fatigue_test.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    rows = {
        "fatigue test: M-wave decline": _decline_text(m, results["intensity_ma"]),
        "fatigue test: median-frequency decline": _decline_text(f, None),
    }
    if tm_true is not None:
        rows["truth: M-wave decline"] = _decline_text(tm_true, None)
        rows["truth: median-frequency decline"] = _decline_text(tf_true, None)
    return {"results": results, "truth": truth, "images": [(png.name, "Fatigue test")], "rows": rows}


def _decline_text(r: dict, level: float | None) -> str:
    if r.get("slope_pct_per_min") is None:
        return "n/a"
    ttd = r["time_to_decline_s"]
    at = f" at {level:g} mA" if level is not None else ""
    return (
        f"{r['slope_pct_per_min']:+.2f} %/min{at}, change {r['change_pct']:+.1f} %, time to decline "
        f"{'not reached' if ttd is None else f'{ttd:.1f} s'} (n={r['n']})"
    )


# -- twitch interpolation --------------------------------------------------------------------------------
def _twitch(data, settings: dict, d: Path) -> dict:
    from closedloop.analysis.twitch import group_bursts, interpolate_twitches, measure_doublets
    from closedloop.errors import ClosedLoopError

    force, pulses = data.get("Force"), data.get("Pulses")
    if force is None or pulses is None or pulses.timestamps.size == 0:
        raise ClosedLoopError("twitch interpolation needs a Force stream and pulses in the recording")
    bursts = group_bursts(pulses.timestamps)
    doublets, f_max = measure_doublets(
        force.timestamps,
        force.values[:, 0],
        bursts,
        window_s=float(settings.get("twitch_window_ms", 150.0)) / 1e3,
        baseline_s=float(settings.get("twitch_baseline_ms", 20.0)) / 1e3,
    )
    res = interpolate_twitches(doublets, f_max)
    results = res.as_dict()
    truth = {}
    gt = data.get("GroundTruth")
    if _sim(data) and gt is not None and res.pairs:
        t_sup = np.array([res.doublets[i].t for i, _ in res.pairs])
        drive = np.interp(t_sup, gt.timestamps, gt.channel("drive"))
        truth = {"va_pct": float(100.0 * np.mean(drive)), "trials": [{"va_pct": float(100 * v)} for v in drive]}
    plt = _plt()
    n = max(1, len(res.pairs))
    fig, axes = plt.subplots(1, n, figsize=(min(4.0 * n, 14), 3.3), squeeze=False)
    t0 = data.t0
    for k, ax in enumerate(axes[0]):
        if not res.pairs:
            ax.plot(force.timestamps - t0, force.values[:, 0], lw=0.6)
            ax.set_title("no superimposed/resting doublet pair found")
            break
        i, j = res.pairs[k]
        a, b = res.doublets[i].t - 2.5, res.doublets[j].t + 0.6
        sel = (force.timestamps >= a) & (force.timestamps <= b)
        ax.plot(force.timestamps[sel] - t0, force.values[sel, 0], lw=0.8, color="tab:purple")
        for dbl, col in ((res.doublets[i], "tab:red"), (res.doublets[j], "tab:blue")):
            ax.axvline(dbl.t - t0, color=col, lw=0.7, ls=":")
            ax.plot([dbl.t - t0, dbl.t - t0 + 0.15], [dbl.peak_n, dbl.peak_n], color=col, lw=1)
            ax.plot([dbl.t - t0 - 0.15, dbl.t - t0], [dbl.baseline_n, dbl.baseline_n], color=col, lw=1)
        tv = f", true {truth['trials'][k]['va_pct']:.1f} %" if truth else ""
        ax.set_title(f"trial {k + 1}: VA {res.va_pct[k]:.1f} %{tv}", fontsize=10)
        ax.set_xlabel("session time (s)")
        if k == 0:
            ax.set_ylabel("force (N)")
    fig.suptitle(
        "Twitch interpolation: superimposed doublet (red) during MVC, resting doublet (blue) after", fontsize=10
    )
    fig.tight_layout()
    png = d / "twitch.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    rows = {
        "voluntary activation": f"{res.va_mean_pct:.1f} % over {len(res.pairs)} trials "
        f"({', '.join(f'{v:.1f}' for v in res.va_pct)}); corrected (Strojnik & Komi) "
        f"{results['va_corrected_pct']:.1f} %"
        if res.pairs
        else "no superimposed/resting doublet pair found",
    }
    if truth:
        rows["truth: voluntary activation"] = f"{truth['va_pct']:.1f} %"
    return {"results": results, "truth": truth, "images": [(png.name, "Twitch interpolation")], "rows": rows}


# -- assisted contraction --------------------------------------------------------------------------------
def _assist(data, settings: dict, d: Path) -> dict:
    est, force = data.get("Estimates"), data.get("Force")
    if est is None:
        return {}
    t0 = data.t0
    te = est.timestamps - t0
    pct = est.channel("effort_pct_mvc")
    amp = est.channel("next_amplitude_ma")
    results: dict = {
        "mean_effort_pct_mvc": float(np.nanmean(pct)) if np.isfinite(pct).any() else None,
        "mean_intensity_ma": float(np.nanmean(amp[amp > 0])) if (amp > 0).any() else 0.0,
    }
    tracking = _force_tracking(data)
    if tracking:
        results.update(tracking)
    plt = _plt()
    panels = 3 if force is not None else 2
    fig, axes = plt.subplots(panels, 1, figsize=(11, 2.2 * panels), sharex=True)
    axes[0].plot(te, pct if np.isfinite(pct).any() else est.channel("effort_smooth"), lw=0.8)
    axes[0].set_ylabel("effort (% MVC)" if np.isfinite(pct).any() else "effort (uV)")
    axes[1].plot(te, amp, lw=0.8, color="tab:red")
    axes[1].set_ylabel("intensity (mA)")
    if force is not None:
        axes[2].plot(force.timestamps - t0, force.values[:, 0], lw=0.6, color="tab:purple", label="force")
        if tracking:
            axes[2].plot(tracking["_t"], tracking["_target"], lw=1.0, color="k", ls="--", label="target")
            axes[2].legend(fontsize=8)
        axes[2].set_ylabel("force (N)")
    axes[-1].set_xlabel("session time (s)")
    axes[0].set_title("Effort, stimulation intensity and force")
    fig.tight_layout()
    png = d / "assist.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    for k in [k for k in results if k.startswith("_")]:
        results.pop(k)
    rows = {"assist: mean intensity": f"{results['mean_intensity_ma']:.2f} mA"}
    if "force_rms_error_n" in results:
        rows["force tracking RMS error"] = f"{results['force_rms_error_n']:.2f} N over {results['tracking_s']:.1f} s"
    return {"results": results, "truth": {}, "images": [(png.name, "Effort, intensity and force")], "rows": rows}


def _force_tracking(data) -> dict:
    """RMS error between the force and a force-PID's setpoint over its control phases (after the first 2 s)."""
    proto = data.summary.get("protocol") or {}
    raw = proto.get("raw")
    force = data.get("Force")
    if not raw or force is None:
        return {}
    from experiments.protocol import parse_protocol

    p = parse_protocol(raw, None)
    main = p.make_controller()
    named = p.make_phase_controllers()
    t_all, target_all, err_all = [], [], []
    start = 0.0
    for ph in p.protocol_phases:
        ctrl = named.get(ph.controller) if ph.controller else main
        end = start + ph.duration_s
        if ph.mode == "control" and getattr(ctrl, "measurement", None) == "force_n":
            sel = (force.timestamps - data.t0 >= start + 2.0) & (force.timestamps - data.t0 < end)
            tt = force.timestamps[sel] - data.t0
            if ctrl.setpoint_times_s:
                target = np.interp(tt - start, ctrl.setpoint_times_s, ctrl.setpoint_values)
            else:
                target = np.full(tt.size, float(ctrl.setpoint))
            t_all.append(tt)
            target_all.append(target)
            err_all.append(force.values[sel, 0] - target)
        start = end
    if not err_all:
        return {}
    err = np.concatenate(err_all)
    tgt = np.concatenate(target_all)
    return {
        "force_rms_error_n": float(np.sqrt(np.mean(err**2))),
        "force_rms_error_pct_of_target": float(100 * np.sqrt(np.mean(err**2)) / np.mean(np.abs(tgt))),
        "tracking_s": float(sum(t.size for t in t_all) / force.rate_hz) if force.rate_hz else None,
        "_t": np.concatenate(t_all),
        "_target": tgt,
    }
