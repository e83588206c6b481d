"""The HTTP edge: a Litestar app over the use cases and the read models.

`app.py` builds the app (`create_app`) and its request middleware; `deps.py` holds what each
area's controllers depend on, and `read_side.py` the read-model pool and the one wait until a
write shows in a read model. `controllers/` holds the routes. Around every route:
`guards.py` (who may call what, and the OpenAPI schema), `errors.py` (errors to responses,
with the status of each kind of domain error), `edge.py` (rate limits and CORS, with the
limiter in `ratelimit.py`, its configuration in `ratelimit_rules.py` and what it reads from a
request in `ratelimit_requests.py`), `headers.py` (security headers), `pending.py`
(`X-Read-Models-Pending`), `security.py` (the refused-attempt tally), `metrics.py` (this
process's Prometheus series), `health.py` (the detailed health report), `https.py` (plain HTTP
turned away when HTTPS is required). Live clients share `live_clients.py`; socket.io is `socketio.py`.
Query parsing shared by routes is in `cursors.py` (page cursors) and `time_ranges.py`.
"""
