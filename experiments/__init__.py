"""Protocols (TOML) and what turns a protocol into a session and a report."""
