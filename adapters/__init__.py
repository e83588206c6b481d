"""Adapters: the outside world (devices, event store, NATS) behind small interfaces."""
