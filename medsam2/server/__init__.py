"""The web app and REST API of `medsam2 serve`: `create_app(ServerSettings(...))`."""

from medsam2.server.app import create_app
from medsam2.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
