"""The WattLedger domain: aggregates, events and pure energy math. No I/O here."""
