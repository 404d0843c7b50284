"""Test configuration: LSL stays on this machine (loopback-only liblsl configuration)."""

from closedloop.lslconfig import use_loopback

# Before anything imports pylsl: every test, and every subprocess a test starts, uses loopback-only LSL.
use_loopback(force=True)
