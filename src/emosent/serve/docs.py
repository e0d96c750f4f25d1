"""The API documentation page (/docs), served offline: Swagger UI's files come from the pinned PyPI
package swagger-ui-py (Swagger UI 5, Apache-2.0), not from a CDN, so the page works where emosent is
meant to run, with no network. FastAPI's own page builder makes the HTML around them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
ASSETS_URL = "/docs-static"  # swagger-ui-bundle.js, swagger-ui.css, favicon-32x32.png, LICENSE


def swagger_ui_files() -> Path:
    """The folder of Swagger UI's built files inside swagger-ui-py, found without importing it
    (its __init__ loads every web framework's handler)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the API documentation needs the package swagger-ui-py: pip install swagger-ui-py==25.7.1")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def add_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs over the app's OpenAPI schema, its scripts and styles from this server.
    The app must be made with docs_url=None and redoc_url=None (FastAPI's pages load a CDN)."""
    app.mount(ASSETS_URL, StaticFiles(directory=swagger_ui_files()), name="docs-static")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png")
