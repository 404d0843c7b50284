"""A real mosquitto broker for the MQTT tests and the e-stop bench, on 127.0.0.1 only.

It runs the configuration of ``docs/mosquitto/mosquitto.conf`` (its file paths and port replaced; no
persistence; log to a file) with a password file for the users of :data:`USERS` and the ACL of
``docs/mosquitto/acl``, whose ``closedloop/`` topics are rewritten to a test prefix pattern (``cltest/+/`` by
default: each test uses a prefix of its own, and retained messages of one test never reach another);
optionally with a TLS listener whose CA and server certificate are made by ``openssl`` here. Started as
``mosquitto -c FILE`` in the background with its output in a log file; it can be stopped and started again
on the same ports (a broker restart).

The broker drops to the user ``mosquitto`` when started as root, so its files live in a directory of their
own under the system's temporary directory that this user can read (a test's ``tmp_path`` is private).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["USERS", "Broker", "free_port", "make_tls_files", "mosquitto_missing"]

REPO = Path(__file__).resolve().parents[1]
ACL_TEMPLATE = REPO / "docs" / "mosquitto" / "acl"
CONF_TEMPLATE = REPO / "docs" / "mosquitto" / "mosquitto.conf"

#: The users of docs/mosquitto/acl and the passwords the test broker gives them.
USERS = {
    "closedloop-session": "session-secret",
    "closedloop-operator": "operator-secret",
    "closedloop-viewer": "viewer-secret",
}


def _mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def mosquitto_missing() -> str | None:
    """Why the broker cannot be run here (None if it can): a reason for ``pytest.skip``."""
    if _mosquitto() is None:
        return "mosquitto is not installed (apt-get install mosquitto; CI installs it in .ci/run)"
    if shutil.which("mosquitto_passwd") is None:
        return "mosquitto_passwd is not installed (it comes with the mosquitto package)"
    return None


try:  # loaded here: the child must not import anything between fork and exec (other threads may hold locks)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the broker's process before exec (Linux): SIGTERM when the process that started it dies, so that a
    test run killed by a timeout leaves no broker behind."""
    if _PRCTL is not None:
        _PRCTL(1, 15)  # PR_SET_PDEATHSIG, SIGTERM


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it (EC P-256, valid 2 days).

    Returns the paths ``ca``, ``cert`` and ``key`` (the server's)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed")
    d = Path(directory)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=closedloop test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        d,
    )
    _run(["openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"], d)
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
        d,
    )
    for name in ("ca.crt", "server.crt", "server.key"):
        (d / name).chmod(0o644)  # the broker runs as user mosquitto (a test key only)
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


class Broker:
    """mosquitto on 127.0.0.1 with the users of :data:`USERS` and the ACL of docs/mosquitto/acl.

    Parameters
    ----------
    prefix:
        What ``closedloop`` in the ACL's topics becomes (default ``cltest/+``: any ``cltest/<name>`` prefix).
    tls:
        Also open a TLS listener (:attr:`tls_port`) with a CA made here (:attr:`ca_file`).
    tcp_nodelay:
        ``set_tcp_nodelay`` (as docs/mosquitto/mosquitto.conf): without it the broker's small messages can wait
        for a delayed ACK (about 40 ms) behind an unacknowledged one (Nagle's algorithm).
    """

    def __init__(self, prefix: str = "cltest/+", tls: bool = False, tcp_nodelay: bool = True) -> None:
        missing = mosquitto_missing()
        if missing:
            raise RuntimeError(missing)
        self.exe = _mosquitto()
        self.dir = Path(tempfile.mkdtemp(prefix="closedloop-mosquitto-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.ca_file: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "mosquitto.log"
        self._write_files(prefix, tls, tcp_nodelay)

    def _write_files(self, prefix: str, tls: bool, tcp_nodelay: bool) -> None:
        d = self.dir
        passwd = d / "passwd"
        for i, (user, password) in enumerate(USERS.items()):
            _run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, password], d)
        passwd.chmod(0o644)
        lines = []
        for line in ACL_TEMPLATE.read_text().splitlines():
            if line.startswith("topic "):
                line = line.replace(" closedloop/", f" {prefix}/")
            lines.append(line)
        (d / "acl").write_text("\n".join(lines) + "\n")
        (d / "acl").chmod(0o644)
        # the documented configuration, with this broker's files and port, plus what a test needs
        conf = []
        for line in CONF_TEMPLATE.read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line == "password_file /etc/mosquitto/closedloop.passwd":
                line = f"password_file {passwd}"
            elif line == "acl_file /etc/mosquitto/closedloop.acl":
                line = f"acl_file {d / 'acl'}"
            elif line == "listener 1883 127.0.0.1":
                line = f"listener {self.port} 127.0.0.1"
            elif line == "set_tcp_nodelay true" and not tcp_nodelay:
                line = "set_tcp_nodelay false"
            elif line.startswith("listener "):
                raise RuntimeError(f"{CONF_TEMPLATE}: a listener the tests do not know: {line!r}")
            conf.append(line)
        expected = (f"listener {self.port} 127.0.0.1", f"password_file {passwd}", f"acl_file {d / 'acl'}")
        if not all(line in conf for line in expected):
            raise RuntimeError(f"{CONF_TEMPLATE} lacks the listener, password_file or acl_file the tests expect")
        conf += [
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if tls:
            files = make_tls_files(d)
            self.ca_file = files["ca"]
            conf += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {files['ca']}",
                f"certfile {files['cert']}",
                f"keyfile {files['key']}",
            ]
        self.conf = d / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.conf.chmod(0o644)

    # -- life ---------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> Broker:
        """Start mosquitto and wait until its listeners accept connections."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        for port in (self.port, self.tls_port):
            if port is None:
                continue
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {self.log()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port}: {self.log()}") from None
                    time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL after 5 s)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)

    def close(self) -> None:
        """Stop mosquitto and remove its files."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- use ----------------------------------------------------------------------------------------------
    def url(self, user: str = "closedloop-session", password: str | None = None, tls: bool = False) -> str:
        """``mqtt://user:password@127.0.0.1:port`` (``mqtts://`` and the TLS port with ``tls``); the password
        of :data:`USERS` unless given ("" for none)."""
        password = USERS.get(user, "") if password is None else password
        cred = f"{user}:{password}@" if password else f"{user}@"
        if tls:
            return f"mqtts://{cred}127.0.0.1:{self.tls_port}"
        return f"mqtt://{cred}127.0.0.1:{self.port}"

    def log(self) -> str:
        """The broker's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
