"""The Litestar application factory."""

from __future__ import annotations

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig

from api.controllers.devices import DevicesController
from api.controllers.system import SystemController
from api.errors import EXCEPTION_HANDLERS
from api.services import VERSION, Services


def create_app(services: Services) -> Litestar:
    """Build the HTTP app over ready services; it opens and closes nothing itself."""

    def provide_services() -> Services:
        return services

    return Litestar(
        route_handlers=[SystemController, DevicesController],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(title="WattLedger", version=VERSION, path="/schema"),
        debug=False,
    )
