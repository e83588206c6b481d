"""Read models: projectors that turn the event log into query tables, the queries over them, and the engine.

The engine, one job per module: `tables` declares a read model (`Table`, the `Projector`
protocol); `versions` sets read models up (the tracking tables, fresh tables when a
version changes); `tracking` keeps where each read model stands and reads its status;
`quarantine` reads sections of the log and sets aside events a read model cannot apply;
`rebuild` replays read models beside the live tables (rebuild, verify); `engine` keeps
them all current. `errors` holds `ProjectionError`, the package's exception base.

The read models, each with its queries: `devices` (and `device_as_of`, a device folded
at a past moment; `device_metrics`, what `/metrics` says per device), `energy` (tables
and projector), `energy_queries` and `costs`, `identity` (users, sessions, API keys, and
the per-request reader; `identity_activity` the plain tables of last activity and last
use it writes), `commands`, `exports`, `chain` (the hash chain over the log), and the
audit log: `audit_projector` (tables and projector), `audit_words` (events in words),
`audit` (its queries). `retention` deletes raw readings past their retention.

Only a projector writes a read model's tables, and a replay from zero gives the same rows.
"""
