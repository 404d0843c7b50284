"""MQTT bridge: a session's status, telemetry and events out; e-stop, stop, start and parameter changes in.

The bridge is a session observer (:class:`closedloop.pipeline.SessionObserver`). Its observer methods run in
the session's loop thread and only put values into thread-safe slots and bounded queues; a thread of its own
runs an asyncio loop with the aiomqtt client, serialises JSON, publishes, reads commands and reconnects, so
the pulse loop never waits on the network. Topics (``<prefix>`` = :attr:`MQTTConfig.prefix`; payloads are
JSON objects with ``"v": 1``; the full schema is in docs/mqtt.md):

    <prefix>/status                retained: starting | waiting | running | stopped | estopped | faulted | offline
                                   (the Last Will is the retained "offline")
    <prefix>/telemetry/estimates   the latest estimate, at most telemetry_hz messages/s
    <prefix>/telemetry/pulses      pulses delivered since the previous message, at most telemetry_hz messages/s
    <prefix>/events                every session and safety event (bounded buffer while disconnected)
    <prefix>/cmd/<name>            commands in: estop, stop, start, set, get
    <prefix>/reply                 one reply per command: {"v", "id", "cmd", "ok", "error" | "result", "t"}

An e-stop turns output off in the bridge's thread the moment it is read (``Session.stop_threadsafe``), before
the reply; it acts on any payload (an e-stop is never refused for its syntax). Every other command is refused
with an error reply and no effect when its payload is not a JSON object of the documented keys and types.
``set`` changes only whitelisted numeric controller parameters (:attr:`MQTTConfig.settable`) within their
bounds and through the controller's own validation, in the session's loop thread between two chunks.

The session never stops because the broker is away (unless :attr:`MQTTConfig.stop_on_broker_loss`): the
bridge reconnects with exponential backoff (0.2 s doubling to 5 s), drops telemetry while disconnected (the
latest values are sent on reconnection) and keeps up to :data:`MAX_BUFFERED_EVENTS` events for later.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from closedloop.errors import ConfigError

__all__ = [
    "COMMANDS",
    "ENV_PASSWORD",
    "MAX_BUFFERED_EVENTS",
    "SCHEMA_VERSION",
    "STATUSES",
    "MQTTBridge",
    "MQTTConfig",
    "redact_url",
]

log = logging.getLogger("closedloop.mqtt")

#: The ``"v"`` of every payload; changes only with an incompatible change of the schema in docs/mqtt.md.
SCHEMA_VERSION = 1
#: Environment variable holding the broker password when the URL has a user but no password.
ENV_PASSWORD = "CLOSEDLOOP_MQTT_PASSWORD"
#: Values of ``status`` in ``<prefix>/status``.
STATUSES = ("starting", "waiting", "running", "stopped", "estopped", "faulted", "offline")
#: Commands understood on ``<prefix>/cmd/<name>``.
COMMANDS = ("estop", "stop", "start", "set", "get")
#: Events kept while the broker is away (the oldest are dropped beyond; counted in ``dropped``).
MAX_BUFFERED_EVENTS = 1000
#: Replies and status changes kept while the broker is away.
MAX_BUFFERED_REPLIES = 100
#: Reconnection backoff: first wait, and the longest wait (s).
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
#: Longest wait for a ``set`` to be applied by the session's loop (s); later, it is abandoned, not applied.
SET_TIMEOUT_S = 2.0
#: Longest wait for one publish or subscribe acknowledgement (s).
OPERATION_TIMEOUT_S = 3.0

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_STOP_REASON = "stop (MQTT)"
_ESTOP_REASON = "e-stop (MQTT)"


class _URL(NamedTuple):
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs, summaries and error messages)."""
    try:
        u = urlsplit(url)
        password = u.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    user, _, host = u.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return u._replace(netloc=f"{name}:***@{host}").geturl()


def _parse_url(url: object) -> _URL:
    if not isinstance(url, str) or not url:
        raise ConfigError(f"MQTT url = {url!r}: must be a text string mqtt://[user[:password]@]host[:port]")
    shown = redact_url(url)
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as exc:
        raise ConfigError(f"MQTT url {shown!r}: {exc}; expected mqtt://[user[:password]@]host[:port]") from None
    scheme = u.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError(
            f"MQTT url {shown!r}: scheme {u.scheme + '://' if u.scheme else '(none)'} not supported; use mqtt:// "
            "(plain TCP, port 1883 by default) or mqtts:// (TLS, port 8883 by default)"
        )
    if not u.hostname:
        raise ConfigError(f"MQTT url {shown!r}: no host; expected {scheme}://[user[:password]@]host[:port]")
    if port is None:
        if u.netloc.endswith(":"):
            raise ConfigError(f"MQTT url {shown!r}: empty port after ':'")
        port = _DEFAULT_PORTS[scheme]
    elif not 1 <= port <= 65535:
        raise ConfigError(f"MQTT url {shown!r}: port {port} out of range 1-65535")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise ConfigError(
            f"MQTT url {shown!r}: nothing may follow host:port (the topic prefix is the prefix setting, not "
            "part of the URL)"
        )
    username = unquote(u.username) if u.username else None
    password = unquote(u.password) if u.password else None
    if username is None and u.password:
        raise ConfigError(f"MQTT url {shown!r}: a password without a user name")
    return _URL(scheme, u.hostname, port, username, password)


def _real(owner: str, name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        lo_s = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ConfigError(f"{owner} {name} = {value!r}: must be a number {lo_s} and <= {hi:g}")
    return float(value)


def _check_path(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"MQTTConfig settable key {key!r}: must be 'param', 'controller.param' or a dotted path")
    parts = key.split(".")
    if not all(p.isidentifier() and not p.startswith("_") for p in parts):
        raise ConfigError(
            f"MQTTConfig settable key {key!r}: must be 'param', 'controllername.param' or a dotted path of names "
            "(letters, digits, underscores; not starting with '_'), e.g. 'controller.inner.gain_ma_per_pct'"
        )
    return key


@dataclass(frozen=True)
class MQTTConfig:
    """Where the MQTT bridge connects and what it allows.

    Parameters
    ----------
    url:
        Broker: ``mqtt://[user[:password]@]host[:port]`` (default port 1883) or ``mqtts://...`` for TLS
        (default port 8883). User and password are percent-decoded. Without a password in the URL, the
        environment variable ``CLOSEDLOOP_MQTT_PASSWORD`` gives it (a URL on a command line is visible in
        ``ps``). Never shown with its password (:attr:`redacted_url`).
    prefix:
        Topic prefix, e.g. ``closedloop`` or ``lab2/rig1`` (no wildcards ``+``/``#``, no empty levels, not
        starting with ``$``).
    telemetry_hz:
        Highest rate of each ``telemetry/<kind>`` topic (messages per second), ``0 < telemetry_hz <= 50``.
    client_id:
        MQTT client identifier (default: ``closedloop-<host>-<pid>-<random>``). Two clients with the same
        identifier push each other off the broker.
    ca_file:
        CA certificate(s) (PEM) that signed the broker's certificate (``mqtts://`` only; default: the
        system's CAs).
    cert_file, key_file:
        Client certificate and its key (PEM) if the broker asks for one (``mqtts://`` only; the key may be
        inside ``cert_file``).
    tls_insecure:
        Do not check that the broker's certificate names the URL's host (the certificate chain is still
        verified against ``ca_file``). For tests and brokers reached by an address their certificate lacks.
    keepalive_s:
        MQTT keepalive (s, 1-65535, rounded up to whole seconds): the broker publishes the Last Will about
        1.5 keepalives after it last heard from a client that vanished without closing its connection.
    stop_on_broker_loss:
        End the session (output off, status ``faulted``) when the broker has been unreachable for
        ``broker_loss_timeout_s`` while the session runs, e.g. when MQTT is the operator's only e-stop.
        Default False: the session goes on, the bridge reconnects.
    broker_loss_timeout_s:
        See ``stop_on_broker_loss`` (s, > 0).
    settable:
        Whitelist of what ``set`` may change: ``"param"`` (the main controller's), ``"controllername.param"``
        (``controller`` is the main one; phase controllers by their names) or a dotted path into a wrapped
        controller (``"controller.inner.gain_ma_per_pct"``) mapped to its ``[low, high]`` bounds (in the
        parameter's own unit). Empty: nothing can be changed.
    """

    url: str
    prefix: str = "closedloop"
    telemetry_hz: float = 10.0
    client_id: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    keepalive_s: float = 5.0
    stop_on_broker_loss: bool = False
    broker_loss_timeout_s: float = 10.0
    settable: dict[str, tuple[float, float]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        u = _parse_url(self.url)
        p = self.prefix
        if not isinstance(p, str) or not p:
            raise ConfigError(f"MQTTConfig prefix = {p!r}: must be a non-empty text string, e.g. 'closedloop'")
        bad = [c for c in ("+", "#", "\0") if c in p]
        if bad:
            raise ConfigError(
                f"MQTTConfig prefix = {p!r}: must not contain {' or '.join(map(repr, bad))} (MQTT wildcards are "
                "for subscriptions, not topic names)"
            )
        if p.startswith("/") or p.endswith("/") or "//" in p:
            raise ConfigError(f"MQTTConfig prefix = {p!r}: no leading, trailing or doubled '/' (empty topic levels)")
        if p.startswith("$"):
            raise ConfigError(f"MQTTConfig prefix = {p!r}: topics starting with '$' are reserved for the broker")
        if len(p.encode()) > 1000:
            raise ConfigError(f"MQTTConfig prefix = {p[:40]!r}...: longer than 1000 bytes")
        _real("MQTTConfig", "telemetry_hz", self.telemetry_hz, 0.0, 50.0, lo_open=True)
        if self.client_id is not None and (not isinstance(self.client_id, str) or not self.client_id):
            raise ConfigError(f"MQTTConfig client_id = {self.client_id!r}: must be a non-empty text string or None")
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, Path):
                object.__setattr__(self, name, value := str(value))
            if not isinstance(value, str) or not value:
                raise ConfigError(f"MQTTConfig {name} = {value!r}: must be a file path or None")
            if u.scheme != "mqtts":
                raise ConfigError(
                    f"MQTTConfig {name} = {value!r} needs a TLS connection: use an mqtts:// URL "
                    f"(got {redact_url(self.url)!r})"
                )
            if not Path(value).is_file():
                raise ConfigError(f"MQTTConfig {name} = {value!r}: no such file")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("MQTTConfig key_file is given without cert_file (the client certificate)")
        for name in ("tls_insecure", "stop_on_broker_loss"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"MQTTConfig {name} = {getattr(self, name)!r}: must be true or false")
        if self.tls_insecure and u.scheme != "mqtts":
            raise ConfigError("MQTTConfig tls_insecure = True needs an mqtts:// URL")
        _real("MQTTConfig", "keepalive_s", self.keepalive_s, 1.0, 65535.0)
        _real("MQTTConfig", "broker_loss_timeout_s", self.broker_loss_timeout_s, 0.0, 1e6, lo_open=True)
        settable = self.settable
        if settable is None:
            settable = {}
        if not isinstance(settable, Mapping):
            raise ConfigError(f"MQTTConfig settable = {settable!r}: must map 'param' to [low, high]")
        bounds: dict[str, tuple[float, float]] = {}
        for key, value in settable.items():
            _check_path(key)
            ok = (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            )
            if not ok or value[0] > value[1]:
                raise ConfigError(
                    f"MQTTConfig settable {key} = {value!r}: must be [low, high], two finite numbers, low <= high"
                )
            bounds[key] = (float(value[0]), float(value[1]))
        object.__setattr__(self, "settable", bounds)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={redact_url(self.url) if f.name == 'url' else getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
        )
        return f"MQTTConfig({fields})"

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MQTTConfig:
        """``MQTTConfig(url=url, **kwargs)``; raises :class:`~closedloop.errors.ConfigError` on anything invalid."""
        return cls(url=url, **kwargs)

    @property
    def host(self) -> str:
        return _parse_url(self.url).host

    @property
    def port(self) -> int:
        return _parse_url(self.url).port

    @property
    def tls(self) -> bool:
        """True for ``mqtts://``."""
        return _parse_url(self.url).scheme == "mqtts"

    @property
    def username(self) -> str | None:
        return _parse_url(self.url).username

    @property
    def password(self) -> str | None:
        """The URL's password, else ``$CLOSEDLOOP_MQTT_PASSWORD`` (when the URL names a user), else None."""
        u = _parse_url(self.url)
        if u.password is not None:
            return u.password
        if u.username is not None:
            return os.environ.get(ENV_PASSWORD) or None
        return None

    @property
    def redacted_url(self) -> str:
        """The URL without its password."""
        return redact_url(self.url)

    def topic(self, *levels: str) -> str:
        """``<prefix>/<levels...>``."""
        return "/".join((self.prefix, *levels))


# -- helpers ------------------------------------------------------------------------------------------------
def _num(x: object) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _jsonable(x: object) -> object:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return _num(x)
    if hasattr(x, "item"):  # numpy scalars
        return _jsonable(x.item())
    if hasattr(x, "tolist"):  # numpy arrays
        return _jsonable(x.tolist())
    return str(x)


def _dumps(obj: dict) -> bytes:
    return json.dumps(_jsonable(obj), allow_nan=False, separators=(",", ":")).encode()


def _refused(code: object) -> bool:
    """A SUBACK code that refuses the subscription (0x80 and above; paho gives ints or ReasonCodes)."""
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails (paho-mqtt leaves the socket open then)."""

    def do_handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().do_handshake(*args, **kwargs)
        except BaseException:
            self.close()
            raise


class _CommandError(Exception):
    """A command refused: the message goes into the error reply; nothing was changed."""


class _SetToken:
    """Lets the bridge abandon a ``set`` that the session's loop has not run yet (it is then never applied)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False


@dataclass
class _Change:
    key: str
    owner: object
    attr: str
    value: float


class MQTTBridge:
    """Publishes a session's status, telemetry and events over MQTT and executes its commands.

    Use: ``bridge = MQTTBridge(config)``; give it to the session (``Session(..., observers=[bridge])``, or
    :meth:`attach` adds it); :meth:`attach` the session; :meth:`start` (connects in the background); run the
    session; :meth:`close`. The observer methods are called by the session in its loop thread and never
    block; everything else happens in the bridge's own thread.

    Parameters
    ----------
    config:
        Broker, topics, rates and the ``set`` whitelist.
    """

    def __init__(self, config: MQTTConfig) -> None:
        if not isinstance(config, MQTTConfig):
            raise ConfigError(f"MQTTBridge needs an MQTTConfig, got {type(config).__name__}")
        self.config = config
        self.client_id = config.client_id or (
            f"closedloop-{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.session = None
        #: Counters: connects, connection_failures, disconnects, published (status, events, replies), telemetry,
        #: commands, commands_refused, subscription_refused.
        self.stats: collections.Counter[str] = collections.Counter()
        #: The last connection problem (text), None while connected.
        self.last_error: str | None = None
        self._period = 1.0 / config.telemetry_hz
        self._topics = {
            "status": config.topic("status"),
            "estimates": config.topic("telemetry", "estimates"),
            "pulses": config.topic("telemetry", "pulses"),
            "events": config.topic("events"),
            "reply": config.topic("reply"),
            "cmd": config.topic("cmd", "+"),
        }
        self._cmd_prefix = config.topic("cmd") + "/"
        # handed over by the session's thread (observer methods) -------------------------------------------
        self._latest: tuple | None = None  # the newest interval's telemetry values
        self._sent_latest: tuple | None = None
        self._plock = threading.Lock()
        self._pulses = [0, 0.0, 0.0, math.nan]  # count, sum (mA), max (mA), last (mA) since the last message
        self._events: collections.deque = collections.deque()
        self._events_dropped = 0
        self._event_seq = 0
        self._statuses: collections.deque = collections.deque(maxlen=32)
        self._replies: collections.deque = collections.deque(maxlen=MAX_BUFFERED_REPLIES)
        self._control_channel = 0
        self._t_start_unix: float | None = None
        self._t_start_lsl: float | None = None
        self._active = False  # between on_waiting/on_start and on_end
        self._stop_pending: str | None = None  # a stop that came before the session's loop could take it
        self._ended = False
        self._wake_pending = False
        # the bridge's thread ----------------------------------------------------------------------------
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main_task: asyncio.Task | None = None
        self._ready = threading.Event()
        self._connected = threading.Event()
        self._closing = False
        self._close_deadline = math.inf
        self._closed = False
        self._lost_since = time.monotonic()
        self._session_info: dict = {}
        self._status_now: dict = self._status_payload("starting", "connecting the sources")
        self._whitelist: dict[str, tuple[str, tuple[str, ...], tuple[float, float]]] = {}
        self._set_queue: asyncio.Queue | None = None

    # -- public -------------------------------------------------------------------------------------------
    def attach(self, session) -> MQTTBridge:
        """Bridge ``session`` (a :class:`~closedloop.pipeline.Session`); adds the bridge to its observers if
        it is not there yet. Checks the ``settable`` whitelist against the session's controllers."""
        if self.session is not None and self.session is not session:
            raise ConfigError("this MQTTBridge is already attached to another session; use one bridge per session")
        controllers = session.controllers()
        whitelist = {}
        for key, bounds in self.config.settable.items():
            canon, name, path = self._canonical(key, controllers)
            owner, attr = self._owner(controllers[name], path, canon)
            self._field_check(owner, attr, canon)
            whitelist[canon] = (name, path, bounds)
        self._whitelist = whitelist
        self.session = session
        observers = getattr(session, "observers", None)
        if isinstance(observers, list) and not any(o is self for o in observers):
            observers.append(self)
        cfg = session.config
        self._session_info = {
            "id": Path(session.out_dir).name,
            "out_dir": str(session.out_dir),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "wait_for_start": bool(getattr(session, "wait_for_start", False)),
            "stim_hz": cfg.stim_hz,
            "duration_s": cfg.total_duration_s,
            "phases": [{"name": p.name, "mode": p.mode, "duration_s": p.duration_s} for p in cfg.phases],
            "controllers": {name: type(c).__name__ for name, c in controllers.items()},
            "settable": {k: list(v[2]) for k, v in whitelist.items()},
        }
        self._status_now = self._status_payload("starting", "connecting the sources")
        return self

    def start(self) -> MQTTBridge:
        """Start the bridge's thread: it connects (and reconnects) in the background; returns at once."""
        if self._closed:
            raise RuntimeError("this MQTTBridge was closed; make a new one")
        if self._thread is not None:
            return self
        self._lost_since = time.monotonic()
        self._thread = threading.Thread(target=self._thread_main, name="closedloop-mqtt", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5.0)
        return self

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the bridge is connected to the broker (True) or ``timeout_s`` has passed (False)."""
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self, timeout_s: float = 3.0) -> None:
        """Publish what is pending (the final status; "offline" if the session did not end), disconnect
        cleanly and stop the thread, waiting at most about ``timeout_s``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        self._close_deadline = time.monotonic() + timeout_s
        self._kick()
        thread.join(timeout_s + 0.5)
        if thread.is_alive():  # a publish or connection attempt that hangs: cancel it
            loop, task = self._loop, self._main_task
            if loop is not None and task is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)
            thread.join(2.0)
        if thread.is_alive():
            log.warning("MQTT bridge thread did not stop within %.1f s", timeout_s + 2.5)

    # -- observer methods: the session's loop thread; quick, never blocking --------------------------------
    def on_waiting(self) -> None:
        """Status ``waiting``."""
        self._read_control_channel()
        self._active = True
        self._set_status("waiting", "waiting for the start command")
        self._reissue_stop()

    def on_start(self, t_start: float) -> None:
        """Status ``running``; ``t_start`` (LSL time) is the session's time zero for events' ``t_rel``."""
        self._read_control_channel()
        self._active = True
        self._reissue_stop()
        self._t_start_unix = time.time()
        self._t_start_lsl = t_start
        self._set_status("running", None)

    def on_interval(self, t_rel: float, phase: str, estimate, next_amplitude_ma: float) -> None:
        """Keep the newest estimate (s, mA) for telemetry and count the pulse it delivered, if any."""
        try:
            mdf = estimate.channel_mdf_hz[self._control_channel]
        except (AttributeError, IndexError, TypeError):
            mdf = math.nan
        self._latest = (
            time.time(),
            t_rel,
            phase,
            estimate.index,
            estimate.effort_pct_mvc,
            estimate.effort_uv,
            estimate.effort_smooth_uv,
            estimate.mwave_ptp_uv,
            mdf,
            estimate.amplitude_ma,
            next_amplitude_ma,
        )
        a = estimate.amplitude_ma
        if a == a and a > 0.0:  # a pulse was delivered in this interval (its amplitude, mA)
            with self._plock:
                p = self._pulses
                p[0] += 1
                p[1] += a
                if a > p[2]:
                    p[2] = a
                p[3] = a

    def on_event(self, event: dict) -> None:
        """Queue a session or safety event (``{"t", "kind", "reason"}``); the oldest go beyond the bound."""
        if len(self._events) >= MAX_BUFFERED_EVENTS:
            with contextlib.suppress(IndexError):
                self._events.popleft()
            self._events_dropped += 1
        self._events.append((time.time(), event))
        self._kick()

    def on_end(self, result) -> None:
        """The final status (``stopped``, ``estopped`` or ``faulted``, with the result), then disconnect."""
        status = {"completed": "stopped", "stopped": "stopped", "faulted": "faulted"}.get(result.status, "stopped")
        error = result.error
        reason = "completed" if result.status == "completed" else error
        s = result.summary or {}
        # what turned output off first decides: an e-stop (or a stop) that met a pulse being delivered ends
        # the session with "SafetyError: output off: e-stop ..." (faulted), but the cause was the e-stop
        off = (s.get("output_off") or {}).get("reason") if isinstance(s.get("output_off"), dict) else None
        if isinstance(off, str) and off.startswith("e-stop"):
            status, reason = "estopped", off
        elif off == _STOP_REASON and result.status != "completed":
            status, reason = "stopped", off
        extra = {
            "result": {
                "status": result.status,
                "error": error,
                "n_pulses": result.n_pulses,
                "n_intervals": result.n_intervals,
                "duration_s": s.get("duration_s"),
                "max_amplitude_ma": s.get("max_amplitude_ma"),
                "deadline_misses": result.deadline_misses,
            }
        }
        self._active = False
        self._set_status(status, reason, extra)
        self._ended = True
        self._kick()

    # -- hand-over helpers ----------------------------------------------------------------------------------
    def _reissue_stop(self) -> None:
        """A stop or e-stop that came while the session was still opening its sources turned output off at
        once; ask again now that its loop runs, so that the session also ends."""
        reason, self._stop_pending = self._stop_pending, None
        if reason is not None and self.session is not None:
            self.session.stop_threadsafe(reason)

    def _read_control_channel(self) -> None:
        est = getattr(self.session, "estimator", None)
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            self._control_channel = int(est.config.control_channel)

    def _status_payload(self, status: str, reason: str | None, extra: dict | None = None) -> dict:
        p = {"v": SCHEMA_VERSION, "status": status, "reason": reason, "t": time.time()}
        if self._t_start_unix is not None:
            p["t_start"] = self._t_start_unix
        p["session"] = self._session_info
        if extra:
            p.update(extra)
        return p

    def _set_status(self, status: str, reason: str | None, extra: dict | None = None) -> None:
        p = self._status_payload(status, reason, extra)
        self._status_now = p
        self._statuses.append(p)
        self._kick()

    def _kick(self) -> None:
        """Wake the bridge's loop (at most one pending wake-up)."""
        if self._wake_pending:
            return
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._woken)
        except RuntimeError:  # the loop is closing
            self._wake_pending = False

    def _woken(self) -> None:
        self._wake_pending = False
        if self._wake is not None:
            self._wake.set()

    # -- the bridge's thread --------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:  # close() gave up waiting
            pass
        except BaseException as exc:  # never let the thread die noisily; the session goes on without MQTT
            log.error("MQTT bridge stopped: %r", exc)
        finally:
            self._connected.clear()
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._set_queue = asyncio.Queue(maxsize=64)
        self._main_task = asyncio.current_task()
        self._ready.set()
        helpers = [asyncio.create_task(self._set_worker(), name="mqtt-set")]
        if self.config.stop_on_broker_loss:
            helpers.append(asyncio.create_task(self._loss_monitor(), name="mqtt-loss"))
        try:
            await self._serve()
        finally:
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    def _done(self) -> bool:
        """Nothing more to do: the session ended and everything was sent, or closing and out of time."""
        if self._closing and time.monotonic() >= self._close_deadline:
            return True
        return False

    async def _serve(self) -> None:
        """Connect, serve, reconnect with backoff, until done."""
        backoff = BACKOFF_FIRST_S
        tls = None
        while not self._done():
            finished = False
            try:
                if tls is None and self.config.tls:
                    tls = self._tls_context()
                finished = await self._connection(tls)
                backoff = BACKOFF_FIRST_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiomqtt.MqttError, OSError, ssl errors: try again later
                self._note_loss(exc)
            if finished:
                return
            if self._closing:  # last attempts to send the final status, until the deadline
                await asyncio.sleep(min(backoff, max(0.0, self._close_deadline - time.monotonic())))
            else:  # a close() ends the wait: the last attempt comes at once
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._sleep_until_closing(), backoff)
            backoff = min(backoff * 2.0, BACKOFF_MAX_S)

    async def _sleep_until_closing(self) -> None:
        while not self._closing:
            self._wake.clear()
            await self._wake.wait()

    def _note_loss(self, exc: BaseException) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        text = f"{type(exc).__name__}: {exc}"
        if was:
            self.stats["disconnects"] += 1
            self._lost_since = time.monotonic()
            log.warning("MQTT: lost the broker %s (%s); reconnecting", self.config.redacted_url, text)
            self._session_event("mqtt", f"lost the MQTT broker ({text}); reconnecting")
        else:
            self.stats["connection_failures"] += 1
            if self.last_error != text:
                log.warning("MQTT: cannot connect to %s (%s); retrying", self.config.redacted_url, text)
        self.last_error = text

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self.config
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        ctx.sslsocket_class = _ClosingSSLSocket
        if cfg.cert_file is not None:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        if cfg.tls_insecure:
            ctx.check_hostname = False
        return ctx

    async def _connection(self, tls: ssl.SSLContext | None) -> bool:
        """One connection: True when the bridge finished (clean disconnect), an exception when it was lost."""
        import aiomqtt

        cfg = self.config
        will = aiomqtt.Will(
            self._topics["status"],
            _dumps(self._status_payload("offline", "connection lost (last will)")),
            qos=1,
            retain=True,
        )
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password,
            identifier=self.client_id,
            will=will,
            clean_session=True,
            keepalive=math.ceil(cfg.keepalive_s),
            timeout=OPERATION_TIMEOUT_S,
            tls_context=tls,
            max_queued_incoming_messages=1000,
            # small messages go out at once: without it, Nagle's algorithm holds a reply behind an unacknowledged
            # segment until the broker's delayed ACK (about 40 ms)
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        with contextlib.suppress(AttributeError, RuntimeError):
            client._client.connect_timeout = OPERATION_TIMEOUT_S  # paho's socket connect (default 5 s)
        async with client:
            granted = await client.subscribe(self._topics["cmd"], qos=1)
            if any(_refused(code) for code in granted):
                self.stats["subscription_refused"] += 1
                log.error(
                    "MQTT: the broker refused the subscription to %s (its ACL?): commands, the e-stop included, "
                    "will not arrive; telemetry goes on",
                    self._topics["cmd"],
                )
            self._connected.set()
            self.stats["connects"] += 1
            if self.last_error is not None and self.stats["connects"] > 1:
                self._session_event("mqtt", f"reconnected to the MQTT broker {cfg.redacted_url}")
            self.last_error = None
            reader = asyncio.create_task(self._reader(client), name="mqtt-reader")
            writer = asyncio.create_task(self._writer(client), name="mqtt-writer")
            try:
                done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (reader, writer):
                    t.cancel()
                await asyncio.gather(reader, writer, return_exceptions=True)
            if writer in done and writer.exception() is None:
                self._connected.clear()
                return True  # leaving `async with` disconnects cleanly: the broker discards the will
            task = writer if writer in done else reader
            exc = task.exception() or RuntimeError("connection ended")
            raise exc

    # -- out ------------------------------------------------------------------------------------------------
    async def _publish(self, client, topic: str, payload: dict, qos: int = 1, retain: bool = False) -> None:
        await client.publish(topic, _dumps(payload), qos=qos, retain=retain)
        self.stats["published"] += 1

    async def _writer(self, client) -> None:
        """Publish replies, status changes, events and (at most every 1/telemetry_hz) telemetry; returns when
        the bridge is done (the final status sent, or closing)."""
        if not self._statuses:
            await self._publish(client, self._topics["status"], self._status_now, retain=True)
        next_tel = time.monotonic()
        while True:
            self._wake.clear()
            while self._replies:
                await self._publish(client, self._topics["reply"], self._replies[0])
                self._replies.popleft()
            while self._statuses:
                await self._publish(client, self._topics["status"], self._statuses[0], retain=True)
                self._statuses.popleft()
            while self._events:
                t, ev = self._events[0]
                await self._publish(client, self._topics["events"], self._event_payload(t, ev))
                self._events.popleft()
                self._event_seq += 1
            now = time.monotonic()
            if now >= next_tel:
                await self._telemetry(client)
                next_tel = now + self._period
            if self._replies or self._statuses or self._events:
                continue  # more came while publishing
            if self._ended:
                return
            if self._closing:
                off = self._status_payload("offline", "the MQTT bridge was closed (the session did not end)")
                await self._publish(client, self._topics["status"], off, retain=True)
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_tel - time.monotonic()))

    def _event_payload(self, t_unix: float, ev: dict) -> dict:
        t = _num(ev.get("t"))
        p = {
            "v": SCHEMA_VERSION,
            "seq": self._event_seq,
            "t": t_unix,
            "t_lsl": t,
            "t_rel": (t - self._t_start_lsl) if (t is not None and self._t_start_lsl is not None) else None,
            "kind": str(ev.get("kind")),
            "reason": ev.get("reason"),
        }
        if self._events_dropped:
            p["dropped"] = self._events_dropped
        return p

    async def _telemetry(self, client) -> None:
        latest = self._latest
        if latest is not None and latest is not self._sent_latest:
            t, t_rel, phase, index, pct, eff, eff_s, mw, mdf, amp, nxt = latest
            payload = {
                "v": SCHEMA_VERSION,
                "t": t,
                "t_rel": _num(t_rel),
                "phase": phase,
                "index": int(index),
                "effort_pct_mvc": _num(pct),
                "effort_uv": _num(eff),
                "effort_smooth_uv": _num(eff_s),
                "mwave_ptp_uv": _num(mw),
                "mdf_hz": _num(mdf),
                "amplitude_ma": _num(amp),
                "next_amplitude_ma": _num(nxt),
            }
            await client.publish(self._topics["estimates"], _dumps(payload), qos=0)
            self._sent_latest = latest
            self.stats["telemetry"] += 1
        with self._plock:
            count, total_ma, max_ma, last_ma = self._pulses
            if count:
                self._pulses = [0, 0.0, 0.0, math.nan]
        if count:
            payload = {
                "v": SCHEMA_VERSION,
                "t": time.time(),
                "t_rel": _num(latest[1]) if latest is not None else None,
                "count": count,
                "total": int(getattr(getattr(self.session, "result", None), "n_pulses", 0) or 0),
                "mean_amplitude_ma": total_ma / count,
                "max_amplitude_ma": max_ma,
                "last_amplitude_ma": _num(last_ma),
            }
            try:
                await client.publish(self._topics["pulses"], _dumps(payload), qos=0)
            except BaseException:
                with self._plock:  # not sent: count these pulses in the next message
                    p = self._pulses
                    p[0] += count
                    p[1] += total_ma
                    p[2] = max(p[2], max_ma)
                raise
            self.stats["telemetry"] += 1

    # -- in -------------------------------------------------------------------------------------------------
    async def _reader(self, client) -> None:
        async for msg in client.messages:
            self._command(str(msg.topic), msg.payload, bool(msg.retain))

    def _reply(self, cmd: str, cid: object, ok: bool, error: str | None = None, result: dict | None = None) -> None:
        p: dict = {"v": SCHEMA_VERSION, "id": cid, "cmd": cmd, "ok": ok, "t": time.time()}
        if ok:
            p["result"] = result or {}
        else:
            p["error"] = error
            self.stats["commands_refused"] += 1
        self._replies.append(p)
        if self._wake is not None:
            self._wake.set()

    def _command(self, topic: str, payload: object, retained: bool) -> None:
        """Handle one command message (the bridge's loop). estop/stop/start act here; set/get queue."""
        self.stats["commands"] += 1
        name = topic[len(self._cmd_prefix) :] if topic.startswith(self._cmd_prefix) else topic
        body: object = None
        problem = None
        try:
            if isinstance(payload, (bytes, bytearray)):
                raw = bytes(payload)
            elif payload is None:
                raw = b""
            else:
                raw = str(payload).encode()
            text = raw.decode("utf-8").strip()
            body = json.loads(text) if text else {}
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            problem = f"payload is not JSON: {exc}"
        if problem is None and not isinstance(body, dict):
            problem = f"payload must be a JSON object, got {type(body).__name__}"
        cid = body.get("id") if isinstance(body, dict) else None
        if cid is not None and (isinstance(cid, bool) or not isinstance(cid, (str, int, float))):
            problem = problem or f"id = {cid!r}: must be a string or a number"
            cid = None
        session = self.session
        if name == "estop":  # on anything: an e-stop is never refused for its payload
            if session is None:
                self._reply(name, cid, False, "no session attached to this bridge")
                return
            session.stop_threadsafe(_ESTOP_REASON)
            if not self._active and not self._ended:
                self._stop_pending = _ESTOP_REASON
            result = {"status": "estopped"}
            if problem or retained:
                result["warning"] = "payload ignored: " + (problem or "retained message")
            self._reply(name, cid, True, result=result)
            return
        try:
            if problem:
                raise _CommandError(problem)
            if retained:
                raise _CommandError("retained commands are ignored (publish commands without the retain flag)")
            if name not in COMMANDS:
                raise _CommandError(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
            if session is None:
                raise _CommandError("no session attached to this bridge")
            if self._ended:
                raise _CommandError("the session is over")
            allowed = {"stop": {"id"}, "start": {"id"}, "get": {"id"}, "set": {"id", "param", "value", "params"}}
            unknown = sorted(set(body) - allowed[name])
            if unknown:
                raise _CommandError(
                    f"unknown key(s) {', '.join(map(repr, unknown))} for {name}; allowed: "
                    f"{', '.join(sorted(allowed[name]))}"
                )
            if name == "stop":
                session.stop_threadsafe(_STOP_REASON)
                if not self._active:
                    self._stop_pending = self._stop_pending or _STOP_REASON
                self._reply(name, cid, True, result={"status": "stopped"})
            elif name == "start":
                if not getattr(session, "wait_for_start", False):
                    raise _CommandError("this session was not made to wait for a start command (it starts by itself)")
                if not session.start_threadsafe():
                    raise _CommandError("the session cannot start: it has already begun, or it is not running")
                self._reply(name, cid, True, result={"status": "running"})
            else:  # set, get: in order, without holding up the e-stop
                changes = self._validate_set(body) if name == "set" else None
                try:
                    self._set_queue.put_nowait((name, cid, changes))
                except asyncio.QueueFull:
                    raise _CommandError("too many commands waiting; try again") from None
        except _CommandError as exc:
            self._reply(name, cid, False, str(exc))

    # -- set / get ----------------------------------------------------------------------------------------
    @staticmethod
    def _canonical(key: str, controllers: dict) -> tuple[str, str, tuple[str, ...]]:
        parts = tuple(key.split("."))
        if len(parts) > 1 and parts[0] in controllers:
            name, path = parts[0], parts[1:]
        else:
            name, path = "controller", parts
        if name not in controllers:
            raise ConfigError(f"settable {key!r}: the session has no main controller")
        return ".".join((name, *path)), name, path

    @staticmethod
    def _owner(ctrl: object, path: tuple[str, ...], canon: str) -> tuple[object, str]:
        obj = ctrl
        for part in path[:-1]:
            if part.startswith("_") or not hasattr(obj, part):
                raise ConfigError(f"settable {canon!r}: {type(obj).__name__} has no {part!r}")
            obj = getattr(obj, part)
        return obj, path[-1]

    @staticmethod
    def _field_check(owner: object, attr: str, canon: str) -> None:
        if not dataclasses.is_dataclass(owner) or isinstance(owner, type):
            raise ConfigError(
                f"settable {canon!r}: {type(owner).__name__} is not a dataclass controller; its parameters "
                "cannot be validated, so they cannot be set"
            )
        fields = {f.name: f for f in dataclasses.fields(owner) if f.init and not f.name.startswith("_")}
        if attr not in fields or not _is_number(getattr(owner, attr, None)):
            numeric = sorted(n for n in fields if _is_number(getattr(owner, n, None)))
            raise ConfigError(
                f"settable {canon!r}: not a numeric parameter of {type(owner).__name__} (numeric parameters: "
                f"{', '.join(numeric) or 'none'})"
            )

    def _validate_set(self, body: dict) -> list[_Change]:
        """Whitelist, type, bounds and the controller's own checks, on copies: the live objects are untouched."""
        if "params" in body:
            if "param" in body or "value" in body:
                raise _CommandError("give either param and value, or params, not both")
            params = body["params"]
            if not isinstance(params, dict) or not params:
                raise _CommandError("params must be a non-empty JSON object of parameter: value")
        else:
            if "param" not in body or "value" not in body:
                raise _CommandError('set needs "param" and "value" (or "params": {...})')
            params = {body["param"]: body["value"]}
        controllers = self.session.controllers()
        changes: list[_Change] = []
        seen = set()
        for key, value in params.items():
            if not isinstance(key, str) or not key:
                raise _CommandError(f"param = {key!r}: must be a parameter name")
            try:
                canon, name, path = self._canonical(key, controllers)
            except ConfigError:
                canon = key
            if canon not in self._whitelist:
                allowed = ", ".join(sorted(self._whitelist)) or "nothing (settable is empty)"
                raise _CommandError(f"{key!r} may not be set over MQTT; settable: {allowed}")
            if canon in seen:
                raise _CommandError(f"{key!r} given twice")
            seen.add(canon)
            if not _is_number(value):
                raise _CommandError(f"{canon} = {value!r}: must be a finite number")
            lo, hi = self._whitelist[canon][2]
            if not lo <= value <= hi:
                raise _CommandError(f"{canon} = {value!r}: out of bounds [{lo:g}, {hi:g}]")
            name, path = self._whitelist[canon][0], self._whitelist[canon][1]
            try:
                owner, attr = self._owner(controllers[name], path, canon)
            except (ConfigError, KeyError) as exc:
                raise _CommandError(str(exc)) from None
            current = getattr(owner, attr, None)
            if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
                if not value.is_integer():
                    raise _CommandError(f"{canon} = {value!r}: must be a whole number")
                value = int(value)
            changes.append(_Change(canon, owner, attr, value))
        by_owner: dict[int, list[_Change]] = {}
        for ch in changes:
            by_owner.setdefault(id(ch.owner), []).append(ch)
        for group in by_owner.values():
            owner = group[0].owner
            try:
                copy = dataclasses.replace(owner, **{ch.attr: ch.value for ch in group})
            except Exception as exc:  # ConfigError from __post_init__, TypeError, ValueError
                raise _CommandError(f"refused by {type(owner).__name__}: {exc}") from None
            for ch in group:
                ch.value = getattr(copy, ch.attr)  # as the controller stores it (e.g. float)
        return changes

    async def _set_worker(self) -> None:
        while True:
            name, cid, changes = await self._set_queue.get()
            try:
                if name == "get":
                    self._reply(name, cid, True, result=self._get())
                else:
                    result = await self._apply(changes)
                    self._reply(name, cid, True, result=result)
            except _CommandError as exc:
                self._reply(name, cid, False, str(exc))
            except Exception as exc:
                self._reply(name, cid, False, f"{type(exc).__name__}: {exc}")

    def _get(self) -> dict:
        controllers = self.session.controllers()
        params = {}
        for canon, (name, path, _) in self._whitelist.items():
            with contextlib.suppress(ConfigError, KeyError, AttributeError):
                owner, attr = self._owner(controllers[name], path, canon)
                params[canon] = getattr(owner, attr)
        return {
            "status": self._status_now.get("status"),
            "params": params,
            "bounds": {k: list(v[2]) for k, v in self._whitelist.items()},
        }

    async def _apply(self, changes: list[_Change]) -> dict:
        """Apply validated changes in the session's loop thread (between two chunks); reply after."""
        token = _SetToken()
        session = self.session

        def apply() -> dict:
            with token.lock:
                if token.abandoned:
                    raise _CommandError("abandoned")
                previous = {ch.key: getattr(ch.owner, ch.attr) for ch in changes}
                for ch in changes:
                    setattr(ch.owner, ch.attr, ch.value)
                owners = list({id(ch.owner): ch.owner for ch in changes}.values())
                try:
                    for owner in owners:  # values derived from parameters follow (and a last check)
                        post = getattr(owner, "__post_init__", None)
                        if post is not None:
                            post()
                except Exception:
                    for ch in changes:
                        setattr(ch.owner, ch.attr, previous[ch.key])
                    for owner in owners:
                        with contextlib.suppress(Exception):
                            post = getattr(owner, "__post_init__", None)
                            if post is not None:
                                post()
                    raise
                record = getattr(session, "record_event", None)
                if record is not None:
                    text = ", ".join(f"{ch.key} = {ch.value:g} (was {previous[ch.key]:g})" for ch in changes)
                    with contextlib.suppress(Exception):
                        record("set", f"{text} over MQTT")
                return previous

        fut = session.call_threadsafe(apply)
        waiting = asyncio.wrap_future(fut)
        try:  # shielded: a timeout must not cancel the session's future (it sets its result itself)
            previous = await asyncio.wait_for(asyncio.shield(waiting), SET_TIMEOUT_S)
        except asyncio.TimeoutError:
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
            with token.lock:
                token.abandoned = True
            if fut.done() and fut.exception() is None:
                previous = fut.result()
            else:
                raise _CommandError(
                    f"the session did not take the change within {SET_TIMEOUT_S:g} s; nothing was changed"
                ) from None
        except _CommandError:
            raise
        except Exception as exc:
            if isinstance(exc, RuntimeError) and "not running" in str(exc):
                raise _CommandError("the session is not running; nothing was changed") from None
            raise _CommandError(f"refused: {type(exc).__name__}: {exc}; nothing was changed") from None
        return {"applied": {ch.key: ch.value for ch in changes}, "previous": previous}

    # -- session events and broker loss -------------------------------------------------------------------
    def _session_event(self, kind: str, reason: str) -> None:
        """Record an event in the session (session.xdf, summary.json and, through on_event, MQTT)."""
        session = self.session
        record = getattr(session, "record_event", None)
        if record is None or not self._active:
            return
        fut: concurrent.futures.Future = session.call_threadsafe(lambda: record(kind, reason))
        fut.add_done_callback(lambda f: f.exception())  # retrieved: a session that just ended is fine

    async def _loss_monitor(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(min(0.1, cfg.broker_loss_timeout_s / 4))
            if self._connected.is_set() or not self._active or self._ended:
                continue
            lost = time.monotonic() - self._lost_since
            if lost > cfg.broker_loss_timeout_s:
                reason = (
                    f"MQTT broker {cfg.redacted_url} unreachable for {lost:.1f} s (stop_on_broker_loss, "
                    f"limit {cfg.broker_loss_timeout_s:g} s)"
                )
                log.error("%s: stopping the session", reason)
                self.session.stop_threadsafe(reason, fault=True)
                return
