"""Protocol files: a TOML file a person can read and edit describes a whole session.

Sections (all optional except ``[[phases]]`` and a controller for every control phase; see
``experiments/*.toml`` for documented examples)::

    [protocol]          name, description
    [source]            the EMG stream: name, type, source_id, channels, rate_hz, units, stall_timeout_s,
                        resolve_timeout_s, loopback, force_stream
    [stimulation]       channel, rate_hz, pulse_width_us, stimulator ("lsl", "simulated", "sciencemode"),
                        command_stream, port
    [safety]            the limits of closedloop.safety.SafetyLimits, plus deadline_ms, deadline_policy,
                        nonfinite_policy
    [estimator]         the settings of closedloop.estimation.interval.EstimatorConfig
    [controller]        the main controller: type (see controllers.CONTROLLERS) and its parameters; a
                        wrapper (fatigue_compensation) takes the controller it wraps as an ``inner`` table
    [controllers.NAME]  further controllers, used by the phases that name them
    [[phases]]          name, duration_s, mode ("rest", "calibrate", "control"), controller (a NAME),
                        instruction (what the participant is asked to do), simulate_drive
    [analysis]          what the report computes: kind ("assist", "recruitment", "fatigue", "twitch", "none")
                        and its settings
    [output]            directory, report
    [simulation]        the simulated participant for ``--simulate``: seed, channels, rate_hz, chunk,
                        voluntary_activation, profile; [simulation.muscle] overrides the muscle model
    [mqtt]              the MQTT bridge (closedloop.mqtt.MQTTConfig): url, prefix, telemetry_hz, TLS files,
                        ...; wait_for_start; [mqtt.settable] parameter = [low, high] for remote ``set``

Every key is checked: an unknown key, a wrong type or a value out of range is refused with a message that
names the file, the key, the value and what is allowed; nothing starts.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from closedloop.errors import ConfigError
from closedloop.estimation.interval import EstimatorConfig
from closedloop.pipeline import Phase
from closedloop.safety import SafetyLimits
from controllers import CONTROLLERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ANALYSES", "CONTROLLERS", "Protocol", "ProtocolError", "ProtocolPhase", "load_protocol", "parse_protocol"]

#: What a protocol's report can compute (``[analysis] kind``).
ANALYSES = ("assist", "recruitment", "fatigue", "twitch", "none")


class ProtocolError(ConfigError):
    """A protocol file that cannot be used (the message names the file and the key)."""


@dataclass(frozen=True)
class SourceSection:
    """Where the EMG comes from (LSL)."""

    name: str | None = None
    type: str | None = "EMG"
    source_id: str | None = None
    channels: int | None = None
    rate_hz: float | None = None
    units: str = "microvolts"
    stall_timeout_s: float = 1.0
    resolve_timeout_s: float = 10.0
    loopback: bool = False
    force_stream: str | None = None


@dataclass(frozen=True)
class StimulationSection:
    """What every pulse looks like and who delivers it."""

    channel: int = 0
    rate_hz: float = 25.0
    pulse_width_us: float = 300.0
    stimulator: str = "lsl"
    command_stream: str = "closedloop-stim"
    port: str | None = None


@dataclass(frozen=True)
class SafetySection(SafetyLimits):
    """The safety limits plus the watchdog policies."""

    deadline_ms: float = 5.0
    deadline_policy: str = "skip"
    nonfinite_policy: str = "stop"


@dataclass(frozen=True)
class OutputSection:
    directory: str = "sessions"
    report: bool = True


@dataclass(frozen=True)
class SimulationSection:
    """The simulated participant of ``closedloop run --simulate``.

    ``profile``: ``"phases"`` (each phase's ``simulate_drive``) or a named drive profile (``demo``,
    ``trapezoids``, ``rest``, ``constant:LEVEL``). ``voluntary_activation``: the drive (0..1) of the
    participant's maximal contractions (``simulate_drive = "mvc"``), i.e. the true voluntary activation.
    ``muscle``: overrides of :class:`acquisition.simulator.muscle.MuscleParams` (validated on use).
    """

    profile: str = "phases"
    seed: int = 0
    channels: int = 4
    rate_hz: float = 2048.0
    chunk: int = 8
    voluntary_activation: float = 0.95
    muscle: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.voluntary_activation <= 1.0:
            raise ConfigError(f"voluntary_activation = {self.voluntary_activation!r}: allowed 0 < value <= 1")
        if not 1 <= self.channels <= 512 or not 1 <= self.chunk <= 4096:
            raise ConfigError(f"channels = {self.channels}, chunk = {self.chunk}: allowed 1..512 and 1..4096")


@dataclass(frozen=True)
class AnalysisSection:
    """What the report computes from the session (``kind``) and how.

    Parameters
    ----------
    kind:
        ``"assist"`` (effort, intensity and force), ``"recruitment"`` (M-wave vs intensity, Boltzmann fit),
        ``"fatigue"`` (M-wave and spectral decline), ``"twitch"`` (voluntary activation by twitch
        interpolation) or ``"none"``.
    threshold_fraction:
        Recruitment: the motor threshold is the intensity at which the fitted curve reaches this fraction of
        M-max.
    decline_fraction:
        Fatigue: report the time until the M-wave (and the median frequency) has declined by this fraction.
    smoothing_s:
        Fatigue: moving-average window of the trends (s).
    twitch_window_ms:
        Twitch interpolation: the twitch peak is searched this long after the first pulse of a doublet (ms).
    twitch_baseline_ms:
        Twitch interpolation: force just before the doublet is averaged over this window (ms).
    """

    kind: str = "assist"
    threshold_fraction: float = 0.1
    decline_fraction: float = 0.1
    smoothing_s: float = 5.0
    twitch_window_ms: float = 150.0
    twitch_baseline_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.kind not in ANALYSES:
            raise ConfigError(f"kind = {self.kind!r}: allowed {', '.join(ANALYSES)}")
        for key, lo, hi in (
            ("threshold_fraction", 0.0, 0.5),
            ("decline_fraction", 0.0, 0.9),
        ):
            v = getattr(self, key)
            if not lo < v <= hi:
                raise ConfigError(f"{key} = {v!r}: allowed {lo:g} < value <= {hi:g}")
        for key in ("smoothing_s", "twitch_window_ms", "twitch_baseline_ms"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{key} = {v!r}: must be a positive number")


@dataclass(frozen=True)
class ProtocolPhase:
    """A phase as a protocol file gives it (:class:`closedloop.pipeline.Phase` plus what people read).

    ``instruction`` is what the participant is asked to do (shown and recorded); ``simulate_drive`` is what
    the simulated participant does (``--simulate`` only): a drive level 0..1, ``"mvc"`` (maximal
    contraction at the simulation's ``voluntary_activation``), ``"rest"``, or a named profile started at
    the phase's beginning (``"trapezoids"``, ``"constant:LEVEL"``); default: ``"mvc"`` in calibrate
    phases, rest otherwise.
    """

    name: str
    duration_s: float
    mode: str = "control"
    controller: str | None = None
    instruction: str = ""
    simulate_drive: float | str | None = None

    def __post_init__(self) -> None:
        Phase(self.name, self.duration_s, self.mode, self.controller)  # the session's own checks
        d = self.simulate_drive
        if isinstance(d, float) and not 0.0 <= d <= 1.0:
            raise ConfigError(f"simulate_drive = {d!r}: a drive level must lie in 0..1")
        if isinstance(d, str) and d not in ("mvc", "rest", "trapezoids") and not d.startswith("constant:"):
            raise ConfigError(
                f"simulate_drive = {d!r}: allowed a number 0..1, 'mvc', 'rest', 'trapezoids' or 'constant:LEVEL'"
            )

    def to_phase(self) -> Phase:
        return Phase(self.name, self.duration_s, self.mode, self.controller)


@dataclass(frozen=True)
class Protocol:
    """A parsed, validated protocol."""

    path: Path | None
    name: str
    description: str
    source: SourceSection
    stimulation: StimulationSection
    safety: SafetySection
    estimator: EstimatorConfig
    controller_spec: dict | None
    controller_specs: dict[str, dict]
    protocol_phases: tuple[ProtocolPhase, ...]
    analysis: AnalysisSection
    output: OutputSection
    simulation: SimulationSection
    raw: dict = field(default_factory=dict, repr=False)
    mqtt: dict | None = None

    def mqtt_config(self, url: str | None = None):
        """The MQTT bridge's :class:`closedloop.mqtt.MQTTConfig` from ``[mqtt]`` (``url`` overrides its url);
        None when neither gives a broker."""
        table = dict(self.mqtt or {})
        table.pop("wait_for_start", None)
        if url is not None:
            table["url"] = url
        if not table.get("url"):
            return None
        return _mqtt_config(self.path, table)

    @property
    def wait_for_start(self) -> bool:
        """``[mqtt] wait_for_start``: the phases begin on an MQTT ``start`` command."""
        return bool((self.mqtt or {}).get("wait_for_start", False))

    @property
    def phases(self) -> tuple[Phase, ...]:
        """The phases as the session runs them."""
        return tuple(p.to_phase() for p in self.protocol_phases)

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.protocol_phases)

    @property
    def controller_type(self) -> str:
        return "" if self.controller_spec is None else self.controller_spec["type"]

    def make_controller(self):
        """A fresh main controller (None if the protocol has none)."""
        if self.controller_spec is None:
            return None
        return _build_controller(self.path, "controller", self.controller_spec)

    def make_phase_controllers(self) -> dict:
        """Fresh named controllers (``[controllers.NAME]``), by name."""
        return {n: _build_controller(self.path, f"controllers.{n}", s) for n, s in self.controller_specs.items()}

    def safety_limits(self) -> SafetyLimits:
        """The :class:`SafetyLimits` part of ``[safety]``."""
        names = {f.name for f in dataclasses.fields(SafetyLimits)}
        return SafetyLimits(**{k: v for k, v in dataclasses.asdict(self.safety).items() if k in names})


def _where(path: Path | None) -> str:
    return str(path) if path is not None else "<protocol>"


def _type_ok(value: Any, annotation: Any) -> Any:
    """Check and convert ``value`` against a (resolved) dataclass field annotation."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            if a is type(None):
                if value is None:
                    return None
                continue
            try:
                return _type_ok(value, a)
            except TypeError as exc:
                errors.append(str(exc))
        raise TypeError(" or ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise TypeError("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError("a list")
        inner = args[0] if args else Any
        return tuple(_type_ok(v, inner) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("a text string")
        return value
    return value


def _section(path: Path | None, name: str, data: Any, cls: type, skip: tuple[str, ...] = ()) -> Any:
    """Build dataclass ``cls`` from TOML table ``data``, refusing unknown keys and wrong types."""
    where = _where(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: [{name}] must be a table of keys")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip and not f.name.startswith("_")}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ProtocolError(f"{where}: [{name}] unknown key {key!r}; allowed: {', '.join(sorted(fields))}")
        try:
            kwargs[key] = _type_ok(value, hints[key])
        except TypeError as exc:
            raise ProtocolError(f"{where}: [{name}] {key} = {value!r}: must be {exc}") from None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ProtocolError(f"{where}: [{name}] {exc}") from None


def _mqtt_config(path: Path | None, table: dict):
    """``[mqtt]`` as a :class:`closedloop.mqtt.MQTTConfig`, every key checked like the other sections."""
    from closedloop.mqtt import MQTTConfig

    where = _where(path)
    table = dict(table)
    settable = table.pop("settable", {})
    if not isinstance(settable, dict):
        raise ProtocolError(f"{where}: [mqtt.settable] must be a table of parameter = [low, high]")
    bounds = {}
    for key, value in settable.items():
        ok = (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        )
        if not ok or value[0] > value[1]:
            raise ProtocolError(f"{where}: [mqtt.settable] {key} = {value!r}: must be [low, high] with low <= high")
        bounds[key] = (float(value[0]), float(value[1]))
    cfg = _section(path, "mqtt", table, MQTTConfig, skip=("settable",))
    return dataclasses.replace(cfg, settable=bounds)


def _build_controller(path: Path | None, name: str, table: Any):
    """A controller from its TOML table (``type`` plus parameters; a wrapper's ``inner`` is a table too)."""
    where = _where(path)
    if not isinstance(table, dict) or "type" not in table:
        raise ProtocolError(f"{where}: [{name}] needs type = one of {', '.join(CONTROLLERS)}")
    ctype = table["type"]
    if ctype not in CONTROLLERS:
        raise ProtocolError(f"{where}: [{name}] type = {ctype!r}: allowed {', '.join(CONTROLLERS)}")
    cls = CONTROLLERS[ctype]
    params = {k: v for k, v in table.items() if k != "type"}
    takes_inner = "inner" in {f.name for f in dataclasses.fields(cls)}
    if "inner" in params and takes_inner:
        params["inner"] = _build_controller(path, f"{name}.inner", params["inner"])
    elif takes_inner:
        raise ProtocolError(f"{where}: [{name}] ({ctype}) needs an inner controller table: [{name}.inner]")
    return _section(path, name, params, cls)


def _check_settable(path: Path | None, key: str, main: Any, named: dict) -> None:
    """A whitelisted parameter must name a numeric field of one of the protocol's controllers:
    ``param`` (the main controller), ``controller.param``, ``NAME.param``, ``controller.inner.param``."""
    where = _where(path)
    parts = key.split(".")
    tables = {"controller": main, **named}
    if len(parts) == 1:
        table, rest = main, parts
    else:
        table, rest = tables.get(parts[0]), parts[1:]
    for part in rest[:-1]:
        table = table.get(part) if isinstance(table, dict) else None
    if not isinstance(table, dict):
        raise ProtocolError(f"{where}: [mqtt.settable] {key}: no such controller (have: {', '.join(tables)})")
    cls = CONTROLLERS.get(table.get("type", ""))
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    name = rest[-1]
    hints = typing.get_type_hints(cls) if cls else {}
    if name.startswith("_") or name not in fields or hints.get(name) not in (float, int):
        numeric = sorted(n for n in fields if hints.get(n) in (float, int) and not n.startswith("_"))
        raise ProtocolError(
            f"{where}: [mqtt.settable] {key}: not a numeric parameter of {table.get('type')!r} (allowed: "
            f"{', '.join(numeric)})"
        )


def parse_protocol(data: dict, path: Path | None = None, need_controller: bool = True) -> Protocol:
    """Validate a protocol given as a dict (what ``tomllib`` returns)."""
    where = _where(path)
    known = {
        "protocol",
        "source",
        "stimulation",
        "safety",
        "estimator",
        "controller",
        "controllers",
        "phases",
        "analysis",
        "output",
        "simulation",
        "mqtt",
    }
    for key in data:
        if key not in known:
            raise ProtocolError(f"{where}: unknown section [{key}]; allowed: {', '.join(sorted(known))}")
    head = data.get("protocol", {})
    if not isinstance(head, dict) or set(head) - {"name", "description"}:
        extra = sorted(set(head) - {"name", "description"}) if isinstance(head, dict) else []
        raise ProtocolError(f"{where}: [protocol] allows name and description only, not {extra}")
    source = _section(path, "source", data.get("source"), SourceSection)
    stim = _section(path, "stimulation", data.get("stimulation"), StimulationSection)
    if stim.stimulator not in ("lsl", "simulated", "sciencemode"):
        raise ProtocolError(
            f"{where}: [stimulation] stimulator = {stim.stimulator!r}: allowed 'lsl', 'simulated' or 'sciencemode'"
        )
    if stim.stimulator == "sciencemode" and not stim.port:
        raise ProtocolError(f"{where}: [stimulation] stimulator = 'sciencemode' needs port = the serial device")
    if not (math.isfinite(stim.rate_hz) and 0 < stim.rate_hz <= 200):
        raise ProtocolError(f"{where}: [stimulation] rate_hz = {stim.rate_hz}: allowed 0 < rate_hz <= 200")
    if not (math.isfinite(stim.pulse_width_us) and stim.pulse_width_us > 0):
        raise ProtocolError(f"{where}: [stimulation] pulse_width_us = {stim.pulse_width_us}: must be > 0")
    safety = _section(path, "safety", data.get("safety"), SafetySection)
    if safety.deadline_policy not in ("skip", "stop") or safety.nonfinite_policy not in ("skip", "stop"):
        raise ProtocolError(f"{where}: [safety] deadline_policy and nonfinite_policy: allowed 'skip' or 'stop'")
    if not safety.deadline_ms > 0:
        raise ProtocolError(f"{where}: [safety] deadline_ms = {safety.deadline_ms}: must be > 0")
    if stim.pulse_width_us > safety.max_pulse_width_us:
        raise ProtocolError(
            f"{where}: [stimulation] pulse_width_us = {stim.pulse_width_us:g} exceeds [safety] max_pulse_width_us"
            f" = {safety.max_pulse_width_us:g}"
        )
    if stim.channel not in safety.allowed_channels:
        raise ProtocolError(
            f"{where}: [stimulation] channel = {stim.channel} is not in [safety] allowed_channels = "
            f"{list(safety.allowed_channels)}"
        )
    estimator = _section(path, "estimator", data.get("estimator"), EstimatorConfig)
    ctrl = data.get("controller")
    if ctrl is not None:
        _build_controller(path, "controller", ctrl)  # validates now: nothing starts if wrong
    named = data.get("controllers", {})
    if not isinstance(named, dict):
        raise ProtocolError(f"{where}: controllers must be tables [controllers.NAME]")
    for n, spec in named.items():
        _build_controller(path, f"controllers.{n}", spec)
    phases_raw = data.get("phases", [])
    if not isinstance(phases_raw, list):
        raise ProtocolError(f"{where}: phases must be given as [[phases]] tables")
    phases = tuple(_section(path, f"phases.{i + 1}", p, ProtocolPhase) for i, p in enumerate(phases_raw))
    if need_controller and not phases:
        raise ProtocolError(f"{where}: no [[phases]]: give at least one (name, duration_s, mode)")
    for i, ph in enumerate(phases):
        if ph.controller is not None and ph.controller not in named:
            have = ", ".join(named) or "none"
            raise ProtocolError(
                f"{where}: [[phases]] {i + 1} ({ph.name!r}) controller = {ph.controller!r}: no [controllers."
                f"{ph.controller}] table (defined: {have})"
            )
        if need_controller and ph.mode == "control" and ph.controller is None and ctrl is None:
            raise ProtocolError(
                f"{where}: [[phases]] {i + 1} ({ph.name!r}) is a control phase without a controller: give "
                f"[controller] or controller = NAME with a [controllers.NAME] table"
            )
    analysis = _section(path, "analysis", data.get("analysis"), AnalysisSection)
    mqtt = data.get("mqtt")
    if mqtt is not None:
        if not isinstance(mqtt, dict):
            raise ProtocolError(f"{where}: [mqtt] must be a table of keys")
        wfs = mqtt.get("wait_for_start", False)
        if not isinstance(wfs, bool):
            raise ProtocolError(f"{where}: [mqtt] wait_for_start = {wfs!r}: must be true or false")
        rest = {k: v for k, v in mqtt.items() if k != "wait_for_start"}
        # every key checked now, with or without a url (a stand-in that allows the TLS keys)
        _mqtt_config(path, {"url": "mqtts://127.0.0.1", **rest})
        for key in mqtt.get("settable", {}):
            _check_settable(path, key, ctrl, named)
    output = _section(path, "output", data.get("output"), OutputSection)
    sim = _section(path, "simulation", data.get("simulation"), SimulationSection)
    if sim.muscle:
        from acquisition.simulator.muscle import MuscleParams

        _section(path, "simulation.muscle", sim.muscle, MuscleParams, skip=("n_channels", "rate_hz", "seed"))
    return Protocol(
        path,
        head.get("name", path.stem if path else "protocol"),
        head.get("description", ""),
        source,
        stim,
        safety,
        estimator,
        ctrl,
        dict(named),
        phases,
        analysis,
        output,
        sim,
        data,
        mqtt,
    )


def load_protocol(path: str | Path, need_controller: bool = True) -> Protocol:
    """Read and validate a protocol file (TOML)."""
    p = Path(path)
    if not p.exists():
        raise ProtocolError(f"{p}: no such protocol file")
    if p.is_dir():
        raise ProtocolError(f"{p}: is a folder, not a protocol file (give a .toml file)")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{p}: not valid TOML: {exc}") from None
    except OSError as exc:  # unreadable (permissions, a device): one line, not a traceback
        raise ProtocolError(f"{p}: cannot read the protocol file: {exc.strerror or exc}") from None
    return parse_protocol(data, p, need_controller)
