"""The base of every error the adapters raise, as `domain.errors.DomainError` is the domain's."""


class AdapterError(Exception):
    """Base of every error an adapter raises (NATS, the event contract, the emulator, secrets, counters...)."""
