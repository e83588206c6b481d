"""The base of every error projections/ raises (the engine, replays, read models)."""


class ProjectionError(Exception):
    """Base of every error the projections raise; a subclass keeps the built-in base its callers catch
    (`class ReplayBusy(ProjectionError, RuntimeError)`)."""
