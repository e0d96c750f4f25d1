"""An HTTP API and a web page over `emosent.analyze.analyze`: `emosent serve`."""

from emosent.config import ServeConfig
from emosent.serve.app import create_app
from emosent.serve.server import serve

__all__ = ["ServeConfig", "create_app", "serve"]
