"""Composition root: settings, wiring and the processes WattLedger runs beside itself."""
