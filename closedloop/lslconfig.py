"""Loopback-only Lab Streaming Layer configuration and liblsl availability checks.

liblsl reads its configuration once, when the library loads, from the file named by the environment
variable ``LSLAPICFG``. Its default discovery sends multicast and broadcast packets on every network
interface; :func:`use_loopback` points ``LSLAPICFG`` at a configuration that keeps all LSL traffic on
this machine (ResolveScope = machine, MachineAddresses = KnownPeers = {127.0.0.1}, IPv6 disabled). It must
run before ``pylsl`` is imported; it leaves a user's own ``LSLAPICFG`` untouched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from closedloop.errors import ConfigError, LSLUnavailable

__all__ = ["LOOPBACK_CFG", "import_pylsl", "use_loopback"]

#: The loopback-only liblsl configuration file shipped with closedloop.
LOOPBACK_CFG = Path(__file__).parent / "data" / "lsl_loopback.cfg"


def use_loopback(force: bool = False) -> str:
    """Make liblsl loopback-only for this process and its children; return the config in force.

    Parameters
    ----------
    force:
        Replace a ``LSLAPICFG`` the user has set (default: keep it).

    Raises
    ------
    ConfigError
        If pylsl was already imported with another configuration (liblsl reads it only once).
    """
    current = os.environ.get("LSLAPICFG")
    if current and not force:
        return current
    if "pylsl" in sys.modules and current != str(LOOPBACK_CFG):
        raise ConfigError(
            "pylsl was imported before the loopback LSL configuration was set; call "
            "closedloop.lslconfig.use_loopback() before importing pylsl (or set LSLAPICFG="
            f"{LOOPBACK_CFG} in the environment)"
        )
    os.environ["LSLAPICFG"] = str(LOOPBACK_CFG)
    return str(LOOPBACK_CFG)


def import_pylsl():
    """Import pylsl, translating a missing liblsl binary into :class:`LSLUnavailable` with the fix."""
    try:
        import pylsl
    except (RuntimeError, OSError, ImportError) as exc:
        raise LSLUnavailable(
            f"cannot load liblsl ({exc}). pylsl's manylinux_2_35 x86_64 wheel bundles liblsl; on older glibc "
            "or other architectures install a liblsl yourself: 'pip install mne-lsl' ships one; point PYLSL_LIB at "
            "it: export PYLSL_LIB=$(find \"$(python -c 'import mne_lsl, os; "
            "print(os.path.dirname(mne_lsl.__file__))')\" -name 'liblsl*.so*' | head -n 1)"
        ) from exc
    return pylsl
