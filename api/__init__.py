"""The HTTP edge: a Litestar app over the application service and the read models."""
