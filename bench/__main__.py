"""Run every benchmark and write bench/RESULTS.md.

    python -m bench            # the full set (about 10 minutes on 2 cores)
    python -m bench --quick    # the same benchmarks, short (under 2 minutes)
    python -m bench --only closed_loop,peer --no-write

Each benchmark runs as its own process (a clean interpreter: no state, threads or LSL streams carried from
one to the next), one after the other, so none competes with another for the CPU. Its printed tables go to
bench/RESULTS.md under the exact command that produced them, with the machine, the date and this command;
the targets of issue 8 are checked from the closed-loop runs' JSON. Nothing leaves this machine: LSL is
loopback-only (closedloop.lslconfig) and the MQTT broker binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


@dataclass
class Bench:
    key: str
    title: str
    full: list[str]
    quick: list[str]
    needs: str | None = None  # an executable that must be on PATH
    json: bool = False  # takes --json PATH
    outputs: dict = field(default_factory=dict)


def _benches() -> list[Bench]:
    cl = ["-m", "bench.closed_loop"]
    return [
        Bench(
            "closed_loop_64",
            "Closed loop over LSL: 64 ch x 2048 Hz, 50 Hz pulses, framework vs hand-written baseline",
            [*cl, "--channels", "64", "--rate", "2048", "--stim-hz", "50", "--seconds", "30"],
            [*cl, "--channels", "64", "--rate", "2048", "--stim-hz", "50", "--seconds", "5"],
            json=True,
        ),
        Bench(
            "closed_loop_64_100",
            "Closed loop over LSL: 64 ch x 2048 Hz, 100 Hz pulses (deadline misses over 60 s)",
            [*cl, "--channels", "64", "--rate", "2048", "--stim-hz", "100", "--seconds", "60"],
            [*cl, "--channels", "64", "--rate", "2048", "--stim-hz", "100", "--seconds", "5"],
            json=True,
        ),
        Bench(
            "closed_loop_256",
            "Closed loop over LSL: 256 ch x 10240 Hz, 50 Hz pulses, sustained",
            [*cl, "--channels", "256", "--rate", "10240", "--stim-hz", "50", "--seconds", "60"],
            [*cl, "--channels", "256", "--rate", "10240", "--stim-hz", "50", "--seconds", "5"],
            json=True,
        ),
        Bench(
            "peer",
            "Peers on the same per-pulse work: mne-lsl, ezmsg (single process), baseline, framework",
            ["-m", "bench.peer", "--seconds", "20"],
            ["-m", "bench.peer", "--quick"],
            json=True,
        ),
        Bench(
            "estimators",
            "Estimators on one core: per pulse interval and batched (replay), against sosfilt + RMS",
            ["bench/estimators.py", "--seconds", "10"],
            ["bench/estimators.py", "--seconds", "2", "--channels", "64"],
            json=True,
        ),
        Bench(
            "replay",
            "Replay of a 64 ch x 2048 Hz recording with 30 Hz stimulation, against reading it with MNE",
            ["bench/replay.py", "--repeat", "9", "--seconds", "60"],
            ["bench/replay.py", "--repeat", "1", "--seconds", "10"],
            json=True,
        ),
        Bench(
            "replay_unstim",
            "Replay of a 64 ch x 2048 Hz recording without stimulation (fixed 0.1-s windows)",
            ["bench/replay.py", "--repeat", "5", "--seconds", "60", "--stim-hz", "0.5"],
            ["bench/replay.py", "--repeat", "1", "--seconds", "10", "--stim-hz", "0.5"],
            json=True,
        ),
        Bench(
            "estop_mqtt",
            "E-stop over MQTT through mosquitto on 127.0.0.1",
            ["bench/estop_mqtt.py"],
            [],  # needs a broker and ~1 min: full runs only
            needs="mosquitto",
        ),
    ]


def _machine() -> str:
    import numpy
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import pylsl

        lsl = f"pylsl {pylsl.__version__} (liblsl {pylsl.library_version()})"
    except Exception as exc:  # a machine without liblsl still runs the offline benches
        lsl = f"pylsl unavailable ({exc})"
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, numpy {numpy.__version__}, scipy {scipy.__version__}, {lsl}"
    )


def _fmt_cmd(args: list[str]) -> str:
    return "python " + " ".join(args)


def _targets(results: dict[str, dict]) -> list[str]:
    """Issue 8's and issue 4's targets, checked against the JSON figures of this run."""
    rows = ["| target | measured | verdict |", "|---|---|---|"]

    def row(target: str, measured: str, ok: bool | None) -> None:
        verdict = "n/a (short run)" if ok is None else ("met" if ok else "**missed**")
        rows.append(f"| {target} | {measured} | {verdict} |")

    def get(key: str, name: str) -> dict | None:
        data = results.get(key)
        if not data:
            return None
        return next((r for r in data["rows"] if r["name"] == name and r.get("status") == "ok"), None)

    def completed(r: dict) -> bool:
        """The session ran to its end (a fault, e.g. the watchdog, is a failed target whatever the figures)."""
        return r["counters"].get("session_ok", 1) == 1 and r["pulses"] >= 0.95 * r["pulses_expected"]

    def secs(key: str) -> float:
        return float(results[key]["args"]["seconds"])

    fw, base = get("closed_loop_64", "framework"), get("closed_loop_64", "baseline")
    if fw:
        e = fw["e2e"]
        row("64 x 2048, 50 Hz: e2e median <= 0.35 ms", f"{e['median']:.3f} ms", e["median"] <= 0.35)
        row("64 x 2048, 50 Hz: e2e p99 <= 1 ms", f"{e['p99']:.3f} ms", e["p99"] <= 1.0)
    if fw and base:
        ratio = fw["e2e"]["median"] / base["e2e"]["median"]
        row("framework / baseline (e2e median) <= 1.3", f"{ratio:.2f}", ratio <= 1.3)
    fw100 = get("closed_loop_64_100", "framework")
    if fw100:
        n = fw100["counters"].get("deadline_misses")
        ok = completed(fw100)
        row(
            "64 x 2048, 100 Hz for 60 s: 0 deadline misses",
            f"{n} in {secs('closed_loop_64_100'):g} s, {fw100['pulses']}/{fw100['pulses_expected']} pulses"
            + ("" if ok else " (session did not complete: " + "; ".join(fw100["notes"]) + ")"),
            (n == 0 and ok) if secs("closed_loop_64_100") >= 60 else None,
        )
    fw256 = get("closed_loop_256", "framework")
    if fw256:
        kept = completed(fw256) and fw256["samples_lost"] == 0 and fw256["batched_units"] <= 0.01 * fw256["units"]
        p99 = fw256["e2e"]["p99"]
        row(
            "256 x 10240 for 60 s without falling behind, e2e p99 <= 2 ms",
            f"p99 {p99:.3f} ms, max {fw256['e2e']['max']:.3f} ms, {fw256['samples_lost']} samples lost, "
            f"{fw256['batched_units']} of {fw256['units']} chunks batched, {secs('closed_loop_256'):g} s",
            (kept and p99 <= 2.0) if secs("closed_loop_256") >= 60 else None,
        )
    peers = results.get("peer")
    if peers:
        fwp = next((r for r in peers["rows"] if r["name"] == "framework" and r.get("status") == "ok"), None)
        for r in peers["rows"]:
            if r["name"] in ("framework", "baseline") or fwp is None:
                continue
            if r.get("status") != "ok":
                row(f"faster than {r['name']}", f"unavailable: {r.get('reason')}", None)
                continue
            ratio = r["e2e"]["median"] / fwp["e2e"]["median"]
            row(
                f"faster than {r['name']} (e2e median)",
                f"{r['name']} {r['e2e']['median']:.3f} ms vs framework {fwp['e2e']['median']:.3f} ms "
                f"({r['name']} / framework = {ratio:.2f})",
                ratio > 1.0,
            )
    est = results.get("estimators")
    if est:
        # the target is a lab's HD-EMG replay (64 channels and more); a few channels are bound by per-pulse overhead
        nlms = [r for r in est["rows"] if r["method"] == "nlms" and r["batched_ch_samples_s"] and r["channels"] >= 64]
        if nlms:
            full = float(est["args"]["seconds"]) >= 10
            row(
                "offline estimation >= 30 M channel-samples/s on one core (nlms, batched)",
                ", ".join(f"{r['channels']} ch {r['batched_ch_samples_s'] / 1e6:.1f} M" for r in nlms),
                all(r["batched_ch_samples_s"] >= 30e6 for r in nlms) if full else None,
            )
    for key, what in (("replay", "with 30-Hz pulses"), ("replay_unstim", "without stimulation")):
        rep = results.get(key)
        if rep:
            seconds = float(rep["args"]["seconds"])
            numpy_only = f"; numpy only {seconds / rep['replay_numpy_s']:.0f}x" if rep.get("compiled") else ""
            row(
                f"replay 64 ch x 2048 Hz {what} >= 200x real time on one core (issue 4)",
                f"{rep['x_real_time']:.0f}x (MNE reading the file alone: {seconds / rep['mne_s']:.0f}x; replay / MNE "
                f"read {rep['replay_s'] / rep['mne_s']:.1f}{numpy_only})",
                rep["x_real_time"] >= 200 if seconds >= 60 else None,
            )
    return rows if len(rows) > 2 else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (under 2 minutes)")
    p.add_argument("--only", default=None, metavar="A,B", help="run only these (keys: see --list)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    args = p.parse_args(argv)
    benches = _benches()
    if args.list:
        for b in benches:
            print(f"{b.key:20s} {b.title}")
        return 0
    if args.only:
        keys = set(args.only.split(","))
        unknown = keys - {b.key for b in benches}
        if unknown:
            p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))} (see --list)")
        benches = [b for b in benches if b.key in keys]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = "python -m bench" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    started = _dt.datetime.now()
    sections: list[str] = []
    results: dict[str, dict] = {}
    failed = 0
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        for b in benches:
            cmd = b.quick if args.quick else b.full
            if not cmd:
                sections.append(f"## {b.title}\n\nNot run with --quick (run `python -m bench` for it).\n")
                continue
            if b.needs and shutil.which(b.needs) is None:
                sections.append(f"## {b.title}\n\nNot run: `{b.needs}` is not installed here.\n")
                continue
            run = [sys.executable, *cmd]
            jpath = Path(tmp) / f"{b.key}.json"
            if b.json:
                run += ["--json", str(jpath)]
            print(f"[bench] {_fmt_cmd(cmd)}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
            dt = time.perf_counter() - t0
            out = proc.stdout.strip()
            print(out, flush=True)
            if proc.returncode != 0:
                failed += 1
                err = proc.stderr.strip().splitlines()[-15:]
                print("\n".join(err), file=sys.stderr)
                out += "\n\nFAILED (exit code {}):\n```\n{}\n```".format(proc.returncode, "\n".join(err))
            elif b.json and jpath.exists():
                results[b.key] = json.loads(jpath.read_text())
            sections.append(f"## {b.title}\n\nCommand: `{_fmt_cmd(cmd)}` ({dt:.0f} s)\n\n{out}\n")
    total = time.perf_counter() - t_all
    head = [
        "# Benchmark results",
        "",
        f"Made by `{command}` on {started:%Y-%m-%d %H:%M}, {total:.0f} s in all. Every figure below comes from the "
        "command above it, run on this machine; every ratio is against a baseline timed in the same run.",
        "",
        f"Machine: {_machine()}.",
        "",
        "How to read the figures, and why they are what they are: bench/NOTES.md.",
        "",
    ]
    targets = _targets(results)
    if targets:
        head += ["## Targets (issues 8 and 4)", "", *targets, ""]
    text = "\n".join(head + sections)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"[bench] wrote {RESULTS.relative_to(ROOT)} ({total:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
