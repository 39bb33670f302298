"""The service's HTTP server: the operators' API, metrics, health and readiness, OpenAPI."""

from .api import (
    API_CONFIG,
    API_DISABLED,
    METRICS,
    STORE,
    ApiConfig,
    ApiServer,
    add_open_routes,
    make_api_app,
    running_http_api,
)
from .schema import entry_json, openapi_document, stats_json

__all__ = [
    "API_CONFIG",
    "API_DISABLED",
    "METRICS",
    "STORE",
    "ApiConfig",
    "ApiServer",
    "add_open_routes",
    "entry_json",
    "make_api_app",
    "openapi_document",
    "running_http_api",
    "stats_json",
]
