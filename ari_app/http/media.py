"""``GET /media/{hash}.wav``: rendered text prompts, for Asterisk's ``res_http_media_cache``.

Open (Asterisk sends no token) and narrow: only a name that is a SHA-256 hex digest plus
``.wav`` is looked up, and only in the prompt cache directory, so no request can name another
file; anything else is a 404. The content of a name never changes, which the response says
(``immutable``, an ETag), so Asterisk downloads each prompt once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

from aiohttp import web

from ari_app.tts import HASH_PATTERN, MEDIA_EXTENSION

MEDIA_PATH: Final = "/media/{name}"
_IMMUTABLE: Final = "public, max-age=31536000, immutable"


def media_routes(directory: Path) -> list[web.RouteDef]:
    """The route serving ``directory``'s rendered prompts (GET, and HEAD with it)."""

    async def handle_media(request: web.Request) -> web.StreamResponse:
        key, dot, extension = request.match_info["name"].partition(".")
        if not (dot and extension == MEDIA_EXTENSION and HASH_PATTERN.fullmatch(key)):
            raise web.HTTPNotFound(reason="no such media")
        path = directory / f"{key}.{MEDIA_EXTENSION}"
        if not await asyncio.to_thread(path.is_file):
            raise web.HTTPNotFound(reason="no such media")
        return web.FileResponse(
            path, headers={"Content-Type": "audio/wav", "Cache-Control": _IMMUTABLE}
        )

    return [web.get(MEDIA_PATH, handle_media)]
