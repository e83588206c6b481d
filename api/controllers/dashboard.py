"""The web dashboard: the page at `/` and its files under `/static/`.

The page is plain HTML, CSS and ES modules served from `api/static/` as they are: nothing is built.
It talks to the same JSON API as any client, with the access token held in the page's memory, and
keeps its refresh token in a cookie no script reads (`api/controllers/web_session.py`).
"""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, get
from litestar.response import File
from litestar.router import Router
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class DashboardController(Controller):
    path = "/"
    include_in_schema = False

    @get("/", operation_id="dashboardPage", opt={"public": True}, media_type="text/html")
    async def page(self) -> File:
        """The dashboard's single page; everything it shows comes from the JSON API."""
        return File(path=STATIC_DIR / "index.html", content_disposition_type="inline", media_type="text/html")


def static_router() -> Router:
    """The page's scripts, styles and the vendored chart library, public and outside the schema."""
    return create_static_files_router(path="/static", directories=[STATIC_DIR], opt={"public": True},
                                      include_in_schema=False, name="dashboard-static")  # fmt: skip
