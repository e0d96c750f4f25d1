"""An HTTP API and a web page over `emosent.analyze.analyze`: `emosent serve`."""

from emosent.config import ServeConfig
from emosent.serve.app import create_app
from emosent.serve.server import load_service_model, serve

__all__ = ["ServeConfig", "create_app", "load_service_model", "serve"]
