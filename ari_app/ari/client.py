"""aioari, wrapped once.

What we keep from aioari: the connection set-up (it reads the running Asterisk's own API
description) and its Swagger-driven REST operations for the calls made once per entry or less
often (snoop, externalMedia, bridges). What we fix here, once:

* Its HTTP client puts the websocket credentials in the query string unencoded, and would send
  Basic auth as a *query parameter* on the websocket: we send a proper ``Authorization`` header
  (built by hand: aiohttp 3.14 deprecates ``aiohttp.BasicAuth``) and a heartbeat so a dead TCP
  connection is noticed.
* Its ``Client.run`` calls event callbacks inside the websocket reader and stops reading on one
  malformed message: :meth:`AriClient.listen` reads the socket itself, drops bad messages with a
  log line, and hands each event to a *synchronous* callback that must only enqueue.
* It never reconnects: :class:`ari_app.ari.app.AriApplication` owns the reconnect loop.
* It hands StasisStart (and every event) over as a raw dict: :mod:`ari_app.ari.events` turns
  dicts into typed events and rejects malformed ones.
* Its operations cost more CPU than the request itself (each call walks the Swagger
  parameters, and the answer is wrapped into model objects we never read): the calls every
  entry makes several times (answer, play, stop a playback, set variables, continue, hang up)
  go straight to aiohttp (:meth:`AriClient._rest`), with the same URLs and the same errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import yarl
from aioari.client import Client as AioariClient
from aiohttp import web_exceptions
from aioswagger11.http_client import AsynchronousHttpClient, BasicAuthenticator

from ari_app.ports import ChannelGone, TransportError

log = logging.getLogger(__name__)

# aioswagger11 logs every request's parameters at DEBUG, and those carry the digits we set as
# channel variables and read back: keep its chatter out of the logs whatever the root level.
for _chatty in ("aioswagger11", "aioari"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

JsonObject = dict[str, Any]
DEFAULT_HEARTBEAT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0
BRIDGE_JOIN_ATTEMPTS = 20  # about 2 s in all


class ChannelNotReady(TransportError):
    """422: the channel exists but has not entered our application yet."""


class AriUnreachable(TransportError):
    """No answer from ARI at all (not connected, refused, reset, timed out), as opposed to an
    error ARI answered with: worth retrying once the connection is back."""


class AriUnavailable(Exception):
    """Asterisk's ARI could not be reached or refused our credentials."""


async def wait_until_subscribed(listening: asyncio.Task[None], opened: asyncio.Event) -> None:
    """Wait until ``listening`` (a :meth:`AriClient.listen` task) has opened the event
    websocket, so the app is registered; raises why it ended if it ended first."""
    waiter = asyncio.create_task(opened.wait())
    try:
        await asyncio.wait({listening, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if listening.done():
        await listening  # re-raises why it ended
        raise AriUnavailable("the event websocket closed at once")


def basic_authorization(user: str, password: str) -> str:
    """The ``Authorization`` header value for ARI's Basic auth (the one place it is built)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _AriHttpClient(AsynchronousHttpClient):  # type: ignore[misc]
    """aioswagger11's client with a correct websocket handshake and request timeouts."""

    def __init__(
        self, host: str, user: str, password: str, max_connections: int, heartbeat: float
    ) -> None:
        # Not super().__init__(): it opens a session with no connection limit, and Asterisk's
        # HTTP server drops every connection past http.conf's sessionlimit (100 by default).
        self.authenticator = BasicAuthenticator(host, user, password)
        self.websockets: set[aiohttp.ClientWebSocketResponse] = set()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        )
        self.authorization = basic_authorization(user, password)
        self.rest_headers = {"Authorization": self.authorization, "Accept": "application/json"}
        self.heartbeat = heartbeat

    async def ws_connect(
        self, url: str, params: Mapping[str, str] | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        query = urllib.parse.urlencode(params or {})
        socket: aiohttp.ClientWebSocketResponse = await self.session.ws_connect(
            f"{url}?{query}" if query else url,
            headers={"Authorization": self.authorization},
            heartbeat=self.heartbeat,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
        self.websockets.add(socket)
        return socket


def _quoted(segment: str) -> str:
    """One path segment (a channel or playback id) as it goes in a URL."""
    return urllib.parse.quote(segment, safe="")


def decode_event(data: str) -> JsonObject | None:
    """One text message of the event websocket as an event object, or None (logged)."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json can parse
        log.error("dropped an ARI message that is not JSON (%d bytes)", len(data))
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        log.error("dropped an ARI message without an event type")
        return None
    return event


class AriClient:
    """A typed face over one aioari connection: REST calls and the event stream."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        app: str,
        *,
        max_connections: int = 32,
        heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
    ) -> None:
        self.base_url = base_url
        self._max_connections = max_connections
        self._heartbeat = heartbeat
        self.app = app
        self._user = user
        self._password = password
        self._client: Any = None
        self._http: _AriHttpClient | None = None

    def _http_client(self) -> _AriHttpClient:
        if self._http is None:
            host = urllib.parse.urlsplit(self.base_url).hostname or ""
            self._http = _AriHttpClient(
                host, self._user, self._password, self._max_connections, self._heartbeat
            )
        return self._http

    async def connect(self) -> None:
        client = AioariClient(self.base_url, self._http_client())
        try:
            await client.init()
        except web_exceptions.HTTPUnauthorized:
            await self.close()
            raise AriUnavailable(f"ARI at {self.base_url} refused user {self._user!r}") from None
        except (aiohttp.ClientError, OSError, TimeoutError, web_exceptions.HTTPException) as exc:
            await self.close()
            raise AriUnavailable(f"ARI at {self.base_url} is not reachable: {exc!r}") from None
        self._client = client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = None
        self._client = None

    async def listen(self, on_event: Callable[[JsonObject], None], opened: asyncio.Event) -> None:
        """Read the event websocket until it closes; ``on_event`` must not block.

        ``opened`` is set once the handshake is done: Asterisk has registered the application.
        """
        try:
            # Through swagger directly: aioari's repository would try to read the socket as a body.
            socket = await self._client.swagger.events.eventWebsocket(app=self.app)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnavailable(f"cannot open the ARI event websocket: {exc!r}") from None
        opened.set()
        try:
            async for message in socket:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    if message.type is aiohttp.WSMsgType.ERROR:
                        log.warning("ARI websocket error: %s", socket.exception())
                    continue
                event = decode_event(message.data)
                if event is not None:
                    on_event(event)
        finally:
            await socket.close()

    async def get(self, path: str, *, within: float) -> tuple[int, Any]:
        """``GET /ari/<path>`` as it is: the status, and the JSON body (None when there is
        none). Needs no :meth:`connect`; raises aiohttp's errors, TimeoutError, and ValueError
        for a body that is not JSON (the setup checks of :mod:`ari_app.doctor` tell them apart).
        """
        http = self._http_client()
        async with http.session.get(
            self.base_url + "ari/" + path,
            headers={"Authorization": http.authorization},
            timeout=aiohttp.ClientTimeout(total=within),
        ) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body

    async def app_is_registered(self) -> bool:
        """Whether a websocket holds this Stasis app name on the Asterisk now (Asterisk lists
        an app while one does). Raises AriUnavailable when ARI does not answer as expected."""
        try:
            status, _ = await self.get(
                "applications/" + urllib.parse.quote(self.app, safe=""),
                within=REQUEST_TIMEOUT_SECONDS,
            )
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise AriUnavailable(f"ARI at {self.base_url} did not answer: {exc!r}") from None
        if status not in (200, 404):
            raise AriUnavailable(f"GET applications/{self.app} answered HTTP {status}")
        return status == 200

    async def keep_only_events(self, types: Sequence[str]) -> bool:
        """Ask Asterisk to send this app only events of ``types`` (ARI's event filter, Asterisk
        13.26 and 16.3 on); False where Asterisk has no filter. Raises TransportError."""
        try:
            await self._rest(
                "eventFilter",
                "PUT",
                f"applications/{_quoted(self.app)}/eventFilter",
                # The whole body is the filter (unlike setChannelVars' {"variables": ...}).
                body={"allowed": [{"type": t} for t in types]},
            )
        except ChannelGone:  # 404: an Asterisk from before event filters
            return False
        return True

    # --- REST, in telephony terms ---------------------------------------------------------

    async def answer(self, channel_id: str) -> None:
        await self._rest("answer", "POST", f"channels/{_quoted(channel_id)}/answer")

    async def play(self, channel_id: str, playback_id: str, media: Sequence[str]) -> None:
        # ARI wants one comma-separated value: repeated parameters keep only the last.
        await self._rest(
            "play",
            "POST",
            f"channels/{_quoted(channel_id)}/play",
            {"media": ",".join(media), "playbackId": playback_id},
        )

    async def stop_playback(self, playback_id: str) -> None:
        with contextlib.suppress(ChannelGone):  # the playback had already finished
            await self._rest("stop playback", "DELETE", f"playbacks/{_quoted(playback_id)}")

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self._rest(
            "setChannelVar",
            "POST",
            f"channels/{_quoted(channel_id)}/variable",
            {"variable": name, "value": value},
        )

    async def set_variables(self, channel_id: str, variables: Mapping[str, str]) -> None:
        """All in one request where Asterisk has one (22.10, 20.20 and later), else one each."""
        if self._client is not None and hasattr(self._client.channels.api, "setChannelVars"):
            await self._rest(
                "setChannelVars",
                "POST",
                f"channels/{_quoted(channel_id)}/variables",
                body={"variables": dict(variables)},
            )
            return
        await asyncio.gather(*(self.set_variable(channel_id, k, v) for k, v in variables.items()))

    async def continue_in_dialplan(self, channel_id: str) -> None:
        await self._rest("continue", "POST", f"channels/{_quoted(channel_id)}/continue")

    async def hangup(self, channel_id: str) -> None:
        await self._rest("hangup", "DELETE", f"channels/{_quoted(channel_id)}")

    async def snoop(self, channel_id: str, snoop_id: str) -> None:
        """A channel that hears what the caller says (``spy=in``), entering our app."""
        await self._call(
            "channels",
            "snoopChannelWithId",
            channelId=channel_id,
            snoopId=snoop_id,
            spy="in",
            app=self.app,
        )

    async def external_media(
        self, channel_id: str, rtp_destination: str, *, audio_format: str = "slin16"
    ) -> tuple[str, int]:
        """An externalMedia channel exchanging RTP with ``rtp_destination`` (slin16: what the
        recogniser hears); returns the address Asterisk sends from and listens on."""
        channel = await self._call(
            "channels",
            "externalMedia",
            channelId=channel_id,
            app=self.app,
            external_host=rtp_destination,
            format=audio_format,
            encapsulation="rtp",
            transport="udp",
            connection_type="client",
            direction="both",
        )
        variables = getattr(channel, "json", {}).get("channelvars", {})
        try:
            return str(variables["UNICASTRTP_LOCAL_ADDRESS"]), int(
                variables["UNICASTRTP_LOCAL_PORT"]
            )
        except (KeyError, TypeError, ValueError):
            raise TransportError(
                f"externalMedia did not say where it sends from: {variables!r}"
            ) from None

    async def create_mixing_bridge(self, bridge_id: str, channel_ids: Sequence[str]) -> None:
        await self._call("bridges", "createWithId", bridgeId=bridge_id, type="mixing")
        # Channels we just created (snoop, externalMedia) enter Stasis a moment after the REST
        # call that made them returns; until then Asterisk answers 422.
        for attempt in range(BRIDGE_JOIN_ATTEMPTS):
            try:
                await self._call(
                    "bridges", "addChannel", bridgeId=bridge_id, channel=",".join(channel_ids)
                )
                return
            except ChannelNotReady:
                if attempt == BRIDGE_JOIN_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))

    async def destroy_bridge(self, bridge_id: str) -> None:
        with contextlib.suppress(ChannelGone):
            await self._call("bridges", "destroy", bridgeId=bridge_id)

    async def hangup_quietly(self, channel_id: str) -> None:
        with contextlib.suppress(ChannelGone):
            await self.hangup(channel_id)

    async def channel_exists(self, channel_id: str) -> bool:
        try:
            await self._call("channels", "get", channelId=channel_id)
        except ChannelGone:
            return False
        return True

    async def _rest(
        self,
        operation: str,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        body: JsonObject | None = None,
    ) -> None:
        """One ARI request whose answer we only need the status of; errors as :meth:`_call`'s."""
        http = self._http
        if self._client is None or http is None:
            raise AriUnreachable("not connected to ARI")
        url = self.base_url + "ari/" + path
        if query:
            url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        try:
            async with http.session.request(
                method,
                yarl.URL(url, encoded=True),  # quoted above: yarl need not parse it again
                headers=http.rest_headers,
                json=body,
            ) as response:
                text = await response.text()  # read, so the connection goes back to the pool
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnreachable(f"{operation}: {exc!r}") from None
        if status < 300:
            return
        if status in (404, 409):  # no such channel or playback; not in our application
            raise ChannelGone(f"{operation}: {status}")
        if status == 422:
            raise ChannelNotReady(f"{operation}: HTTP 422 {text}")
        raise TransportError(f"{operation}: HTTP {status} {text}")

    async def _call(self, resource: str, operation: str, **params: object) -> Any:
        if self._client is None:
            raise AriUnreachable("not connected to ARI")
        try:
            return await getattr(getattr(self._client, resource), operation)(**params)
        except (web_exceptions.HTTPNotFound, web_exceptions.HTTPConflict) as exc:
            # 404: no such channel or playback; 409: the channel is not in our application.
            raise ChannelGone(f"{resource}.{operation}: {exc.status_code}") from None
        except web_exceptions.HTTPUnprocessableEntity as exc:
            raise ChannelNotReady(f"{resource}.{operation}: HTTP 422 {exc.text}") from None
        except web_exceptions.HTTPException as exc:
            raise TransportError(
                f"{resource}.{operation}: HTTP {exc.status_code} {exc.text}"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnreachable(f"{resource}.{operation}: {exc!r}") from None
