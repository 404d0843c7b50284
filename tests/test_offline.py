"""Whole-recording estimation: simulated data with known truth, and the real recordings when present."""

from pathlib import Path

import numpy as np
import pytest

from acquisition.simulator.muscle import MuscleParams, VirtualMuscle
from closedloop.estimation.offline import estimate_recording
from closedloop.types import StreamInfo


def _data_dir() -> Path | None:
    import os

    for cand in (os.environ.get("CLOSEDLOOP_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if cand and Path(cand, "tscs_SingleCh_StimON.mat").exists():
            return Path(cand)
    return None


def test_known_and_detected_pulses_give_the_true_mwaves():
    fs = 2048.0
    m = VirtualMuscle(MuscleParams(seed=3, fatigue_rate_scale=0.0, n_channels=2))
    blocks = [m.generate(int(0.5 * fs), 0.2)]  # half a second without pulses first
    for _ in range(60):
        m.schedule_pulse(m.now + 2 / fs, 0, 20.0, 300.0)
        blocks.append(m.generate(68, 0.2))  # 30 Hz
    x = np.concatenate([b.emg for b in blocks])
    truth = [p for b in blocks for p in b.pulses]
    info = StreamInfo("sim", "EMG", fs, ("a", "b"), ("uV",))
    for kwargs in ({"pulse_samples": np.array([p.sample_index for p in truth])}, {"detect": True}):
        tab = estimate_recording(x, info, **kwargs)
        np.testing.assert_array_equal(tab.pulse_samples, [p.sample_index for p in truth])
        ptp = tab.mwave_ptp_uv[tab.has_pulse]
        true_ptp = np.array([p.mwave_ptp_uv[0] for p in truth])
        # the volitional EMG (80 uV RMS) rides on each M-wave: single pulses within 10 %, the mean within 2 %
        assert np.all(np.abs(ptp / true_ptp - 1) < 0.10)
        assert np.mean(ptp) == pytest.approx(np.mean(true_ptp), rel=0.02)
        assert tab.t_s[0] == 0.0 and not tab.has_pulse[0]  # the pulse-free start is measured in windows


@pytest.mark.skipif(_data_dir() is None, reason="shared data folder (../shared/data or $CLOSEDLOOP_DATA) not present")
def test_real_recordings_run_through_the_estimators():
    from experiments.real_data import bsnb_summary, tscs_summary

    d = _data_dir()
    t = tscs_summary(d)
    assert t["pulses"] > 3800 and t["rate_hz"] == pytest.approx(30.0, rel=0.02)
    for r in t["methods"].values():
        assert np.isfinite(r["effort_stim"]) and np.isfinite(r["effort_free"])
    pytest.importorskip("h5py")
    b = bsnb_summary(d)
    assert len(b["contractions"]) == 9  # the nine cyclic biceps contractions the file holds
