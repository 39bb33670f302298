"""The operators' HTTP API: entries, one entry, aggregates, OpenAPI document, health."""

from .api import API_CONFIG, STORE, ApiConfig, ApiServer, make_api_app, running_http_api
from .schema import entry_json, openapi_document, stats_json

__all__ = [
    "API_CONFIG",
    "STORE",
    "ApiConfig",
    "ApiServer",
    "entry_json",
    "make_api_app",
    "openapi_document",
    "running_http_api",
    "stats_json",
]
