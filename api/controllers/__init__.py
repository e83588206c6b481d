"""The routes, one controller per resource, each taking its area's dependency set (`api.deps`);
the bodies of the larger ones are in `*_schemas.py` beside them."""
