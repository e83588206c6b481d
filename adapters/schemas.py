"""PostgreSQL schemas that more than one adapter writes to, named once."""

OPS_SCHEMA = "wl_ops"
"""Operational state shared by processes, not events: poll members and leases, rate-limit counters."""
