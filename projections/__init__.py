"""Read models: projectors that turn the event log into query tables, and their queries."""
