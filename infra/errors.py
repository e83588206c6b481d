"""The base of every error infra/ raises (settings, start-up, embedded servers, supervision, replay)."""


class InfraError(Exception):
    """Base of every error the composition root and the command line raise; a subclass keeps the built-in
    base its callers catch (`SettingsError` is still a `ValueError`)."""
