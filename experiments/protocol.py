"""Protocol files: a TOML file a person can read and edit describes a whole session.

Sections (all optional except ``[controller]`` and ``[[phases]]`` for live sessions; see
``experiments/*.toml`` for documented examples)::

    [protocol]     name, description
    [source]       the EMG stream: name, type, source_id, channels, rate_hz, units, stall_timeout_s,
                   resolve_timeout_s, loopback
    [stimulation]  channel, rate_hz, pulse_width_us, stimulator ("lsl" or "simulated"), command_stream
    [safety]       the limits of closedloop.safety.SafetyLimits, plus deadline_ms, deadline_policy,
                   nonfinite_policy
    [estimator]    the settings of closedloop.estimation.interval.EstimatorConfig
    [controller]   type (see CONTROLLERS) and that controller's parameters
    [[phases]]     name, duration_s, mode ("rest", "calibrate", "control")
    [output]       directory, report
    [simulation]   the simulated participant for ``--simulate``: profile, seed, channels, rate_hz, chunk

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
from controllers.open_loop import Constant
from controllers.proportional import ProportionalAssist

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["CONTROLLERS", "Protocol", "ProtocolError", "load_protocol", "parse_protocol"]

#: Controller types a protocol can name, and the class each makes.
CONTROLLERS: dict[str, type] = {"proportional": ProportionalAssist, "constant": Constant}


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


@dataclass(frozen=True)
class StimulationSection:
    """What every pulse looks like and who delivers it."""

    channel: int = 0
    rate_hz: float = 25.0
    pulse_width_us: float = 300.0
    stimulator: str = "lsl"
    command_stream: str = "closedloop-stim"


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
    profile: str = "demo"
    seed: int = 0
    channels: int = 4
    rate_hz: float = 2048.0
    chunk: int = 8


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
    controller_type: str
    controller_params: dict
    phases: tuple[Phase, ...]
    output: OutputSection
    simulation: SimulationSection
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    def make_controller(self):
        """A fresh controller of the protocol's type and parameters."""
        return CONTROLLERS[self.controller_type](**self.controller_params)

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


def parse_protocol(data: dict, path: Path | None = None, need_controller: bool = True) -> Protocol:
    """Validate a protocol given as a dict (what ``tomllib`` returns)."""
    where = _where(path)
    known = {"protocol", "source", "stimulation", "safety", "estimator", "controller", "phases", "output", "simulation"}
    for key in data:
        if key not in known:
            raise ProtocolError(f"{where}: unknown section [{key}]; allowed: {', '.join(sorted(known))}")
    head = data.get("protocol", {})
    if not isinstance(head, dict) or set(head) - {"name", "description"}:
        extra = sorted(set(head) - {"name", "description"}) if isinstance(head, dict) else []
        raise ProtocolError(f"{where}: [protocol] allows name and description only, not {extra}")
    source = _section(path, "source", data.get("source"), SourceSection)
    stim = _section(path, "stimulation", data.get("stimulation"), StimulationSection)
    if stim.stimulator not in ("lsl", "simulated"):
        raise ProtocolError(f"{where}: [stimulation] stimulator = {stim.stimulator!r}: allowed 'lsl' or 'simulated'")
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
    if ctrl is None:
        if need_controller:
            raise ProtocolError(f"{where}: [controller] is missing; give type = one of {', '.join(CONTROLLERS)}")
        ctype, cparams = "", {}
    else:
        if not isinstance(ctrl, dict) or "type" not in ctrl:
            raise ProtocolError(f"{where}: [controller] needs type = one of {', '.join(CONTROLLERS)}")
        ctype = ctrl["type"]
        if ctype not in CONTROLLERS:
            raise ProtocolError(f"{where}: [controller] type = {ctype!r}: allowed {', '.join(CONTROLLERS)}")
        cparams = {k: v for k, v in ctrl.items() if k != "type"}
        obj = _section(path, "controller", cparams, CONTROLLERS[ctype])  # validates now: nothing starts if wrong
        cparams = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name in cparams}
    phases_raw = data.get("phases", [])
    if not isinstance(phases_raw, list):
        raise ProtocolError(f"{where}: phases must be given as [[phases]] tables")
    phases = tuple(_section(path, f"phases.{i + 1}", p, Phase) for i, p in enumerate(phases_raw))
    if need_controller and not phases:
        raise ProtocolError(f"{where}: no [[phases]]: give at least one (name, duration_s, mode)")
    output = _section(path, "output", data.get("output"), OutputSection)
    sim = _section(path, "simulation", data.get("simulation"), SimulationSection)
    return Protocol(
        path,
        head.get("name", path.stem if path else "protocol"),
        head.get("description", ""),
        source,
        stim,
        safety,
        estimator,
        ctype,
        cparams,
        phases,
        output,
        sim,
        data,
    )


def load_protocol(path: str | Path, need_controller: bool = True) -> Protocol:
    """Read and validate a protocol file (TOML)."""
    p = Path(path)
    if not p.exists():
        raise ProtocolError(f"{p}: no such protocol file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{p}: not valid TOML: {exc}") from None
    return parse_protocol(data, p, need_controller)
