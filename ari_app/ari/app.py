"""The Stasis application: one connection to ARI per Asterisk, kept alive, routing events to
call tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ari_app.ari.client import (
    AriClient,
    AriUnavailable,
    AriUnreachable,
    wait_until_subscribed,
)
from ari_app.ari.events import (
    EVENT_TYPES_USED,
    ApplicationReplaced,
    ChannelLeft,
    DtmfReceived,
    MalformedEvent,
    PlaybackFinished,
    StasisStarted,
    is_own_channel,
    parse_event,
)
from ari_app.ari.speech import AriSpeechTap
from ari_app.media import (
    Characters,
    Digits,
    MediaItem,
    Number,
    OtherMedia,
    Sound,
    TextPrompt,
    Url,
    key_sounds,
    shown,
)
from ari_app.metrics import Metrics
from ari_app.ports import CallInfo, CallPort, EntryStore, SessionInbox, TransportError
from ari_app.session import Sessions
from ari_app.settings import Settings
from ari_app.speech.listener import SpeechListener
from ari_app.speech.recognizer import DigitRecognizer
from ari_app.speech.rtp import RtpReceiver
from ari_app.tts import TextPrompts, text_prompts

log = logging.getLogger(__name__)

FIRST_RECONNECT_DELAY = 0.5
HANDBACK_RETRY_PAUSE = 0.5
# Once another websocket has taken the Stasis app name over (ApplicationReplaced: another serve
# with the same ARI_APP), how often to ask the Asterisk whether the name is free again. Taking
# it back while the other still holds it would only have two serves steal each other's calls
# in turn, so the connection stays down until the name is released (or ARI stops answering).
REPLACED_RECHECK_S = 60.0
# While the name stays taken, an ERROR this often: the operator has two serves to sort out.
REPLACED_REMIND_S = 600.0
# How long the entries in progress get to go back to the dialplan once the name is taken.
REPLACED_HANDBACK_GRACE_S = 5.0

ClientFactory = Callable[[Settings], AriClient]


def default_client(settings: Settings) -> AriClient:
    return AriClient(
        settings.ari_url,
        settings.ari_user,
        settings.ari_password,
        settings.ari_app,
        max_connections=settings.ari_max_connections,
        heartbeat=settings.ari_heartbeat,
    )


def ari_media(media: Sequence[MediaItem], *, label: str = "-") -> list[str]:
    """Typed media items as the media URIs of one ARI playback.

    A read-back is spelled as the stock sound files of its keys (:func:`~ari_app.media.key_sounds`):
    Asterisk plays ``digits:`` through its say API, which a playback stop cannot interrupt.
    """
    uris: list[str] = []
    for item in media:
        match item:
            case Sound(name):
                uris.append(f"sound:{name}")
            case Url(url):
                uris.append(f"sound:{url}")
            case Digits(keys):
                sounds = key_sounds(keys)
                uris += [f"sound:{sound}" for sound in sounds] if sounds else [f"digits:{keys}"]
            case Number(value):
                uris.append(f"number:{value}")
            case Characters(value):
                uris.append(f"characters:{value}")
            case OtherMedia(uri):
                uris.append(uri)
            case TextPrompt():  # TextPrompts.playable renders them all; never here
                log.warning("channel %s: %s was not rendered; skipped", label, shown(item)[:80])
    return uris


class AriCallPort:
    """A session's view of its channel, through whatever ARI connection is current."""

    def __init__(self, app: AriApplication, channel_id: str) -> None:
        self._app = app
        self._channel_id = channel_id

    def _client(self) -> AriClient:
        return self._app.link.client()

    async def answer(self) -> None:
        await self._client().answer(self._channel_id)

    async def play(self, playback_id: str, media: Sequence[MediaItem]) -> None:
        playable = await self._app.prompts.playable(media, label=self._channel_id)
        uris = ari_media(playable, label=self._channel_id)
        await self._client().play(self._channel_id, playback_id, uris)

    async def stop_playback(self, playback_id: str) -> None:
        await self._client().stop_playback(playback_id)

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        await self._app.link.through_reconnect(
            lambda client: client.set_variables(self._channel_id, variables),
            f"channel {self._channel_id}: hand-back",
        )

    async def release(self) -> None:
        await self._app.link.through_reconnect(
            lambda client: client.continue_in_dialplan(self._channel_id),
            f"channel {self._channel_id}: hand-back",
        )


class CurrentAri:
    """Whatever ARI connection the application has now, and waiting one out.

    The channel stays in Stasis while ARI is down, and a stalled Asterisk keeps a speech tap's
    snoop and bridge: a hand-back or a teardown given up on would leave them there.
    """

    # How long a step keeps trying through a reconnect.
    patience = 20.0

    def __init__(self, app: AriApplication) -> None:
        self._app = app
        self._deferred: set[asyncio.Task[None]] = set()

    def client(self) -> AriClient:
        client = self._app.client
        if client is None:
            raise AriUnreachable("ARI is disconnected")
        return client

    async def through_reconnect(
        self, step: Callable[[AriClient], Awaitable[None]], what: str
    ) -> None:
        """Run ``step``, waiting out a reconnect if ARI fails meanwhile; raises AriUnreachable
        once ``patience`` has passed. An error ARI answered with is raised at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patience
        while True:
            try:
                await step(self.client())
                return
            except AriUnreachable as exc:
                if loop.time() >= deadline:
                    raise
                log.warning("%s: ARI failed (%s); waiting for the connection", what, exc)
            # The websocket reader may not have noticed the drop yet: pause, then wait until
            # the connection is (again) up.
            await asyncio.sleep(HANDBACK_RETRY_PAUSE)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._app.connected.wait()

    def when_connected(self, step: Callable[[AriClient], Awaitable[None]], what: str) -> None:
        task = asyncio.create_task(self._deferred_step(step, what), name=what)
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)

    async def _deferred_step(self, step: Callable[[AriClient], Awaitable[None]], what: str) -> None:
        try:
            await self.through_reconnect(step, what)
        except TransportError as exc:
            log.warning("%s: given up: %s", what, exc)

    async def close(self) -> None:
        """Cancel the steps still waiting for a connection."""
        for task in list(self._deferred):
            task.cancel()
        await asyncio.gather(*self._deferred, return_exceptions=True)


@dataclass(frozen=True)
class SpeechResources:
    """Shared by every entry: one RTP port, one loaded model."""

    receiver: RtpReceiver
    recognizer: DigitRecognizer
    advertised_host: str  # where Asterisk sends RTP: this host as Asterisk reaches it


class _Outage:
    """The failed attempts since the connection was last up: the first is logged at WARNING,
    then one line a minute, so a long outage with a short retry delay does not flood the log."""

    REMIND_EVERY_S = 60.0

    def __init__(self) -> None:
        self.attempts = 0
        self._began = time.monotonic()
        self._warned = -math.inf

    def failed(self, reason: str) -> None:
        self.attempts += 1
        now = time.monotonic()
        if now - self._warned < self.REMIND_EVERY_S:
            log.debug("%s", reason)
            return
        self._warned = now
        if self.attempts == 1:
            log.warning("%s", reason)
        else:
            log.warning("%s (%s so far)", reason, self.summary())

    def summary(self) -> str:
        return f"{self.attempts} failed attempts in {time.monotonic() - self._began:.1f} s"


class AriApplication:
    """Keeps one ARI connection alive (to the Asterisk at ``settings.ari_url``) and runs each
    caller's entry through the session runner.

    ``endpoint``: that Asterisk's position in ARI_URL, for the metrics. ``on_connected`` runs
    after each connection and reconnection is up (``serve`` freezes its long-lived objects then:
    :func:`ari_app.server.tune_garbage_collection`).
    """

    def __init__(
        self,
        settings: Settings,
        store: EntryStore,
        *,
        client_factory: ClientFactory = default_client,
        speech: SpeechResources | None = None,
        metrics: Metrics | None = None,
        prompts: TextPrompts | None = None,
        endpoint: int = 1,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._on_connected = on_connected
        self._speech = speech
        self.prompts = prompts or text_prompts(settings)
        self.metrics = metrics if metrics is not None else Metrics()
        self._settings = settings
        self._client_factory = client_factory
        self.client: AriClient | None = None
        self.connected = asyncio.Event()
        # Set by an ApplicationReplaced event, until the app name is free again.
        self.replaced = asyncio.Event()
        self.reconnects = 0
        self.link = CurrentAri(self)
        self.runner = Sessions(store, hash_key=settings.hash_key, metrics=self.metrics)

    @property
    def sessions(self) -> Mapping[str, SessionInbox]:
        """Entries in progress, by channel id."""
        return self.runner.running

    async def run(self) -> None:
        """Connect, listen, and reconnect with capped exponential backoff; runs until cancelled."""
        delay = FIRST_RECONNECT_DELAY
        attempt = 0
        outage = _Outage()
        while True:
            client = self._client_factory(self._settings)
            listening: asyncio.Task[None] | None = None
            try:
                await client.connect()
                opened = asyncio.Event()
                listening = asyncio.create_task(client.listen(self.dispatch, opened))
                # The websocket must be up before we tell anyone we are ready (an originate into
                # an app without a websocket is accepted, then the channel dies).
                await wait_until_subscribed(listening, opened)
                await self._send_only_used_events(client)
                self.client = client
                self.connected.set()
                self.metrics.ari_connection(self.endpoint, connected=True)
                if attempt:
                    self.reconnects += 1
                    self.metrics.ari_reconnected(self.endpoint)
                    log.info(
                        "reconnected to ARI at %s (%s)", self._settings.ari_url, outage.summary()
                    )
                    await self._reconcile_sessions()
                else:
                    log.info("connected to ARI at %s as app %r", client.base_url, client.app)
                if self._on_connected is not None:
                    self._on_connected()
                delay = FIRST_RECONNECT_DELAY
                await self._listen_until_replaced(listening)
            except AriUnavailable as exc:
                outage.failed(f"ARI unavailable: {exc}")
            except Exception:
                # Whatever went wrong, the application must come back: log it and reconnect.
                log.exception("the ARI connection failed")
            finally:
                if self.connected.is_set():
                    outage = _Outage()  # the connection was up until now
                if listening is not None and not listening.done():
                    listening.cancel()
                    await asyncio.gather(listening, return_exceptions=True)
                self.connected.clear()
                self.metrics.ari_connection(self.endpoint, connected=False)
                self.client = None
                await client.close()
            attempt += 1
            if self.replaced.is_set():
                await self._wait_until_app_released()
                self.replaced.clear()
                outage = _Outage()
            log.log(
                logging.INFO if outage.attempts <= 1 else logging.DEBUG,
                "reconnecting to ARI in %.1f s",
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.reconnect_max_delay)

    async def _send_only_used_events(self, client: AriClient) -> None:
        """Without the filter every event reaches us and the unused ones are dropped here, at
        the cost of a JSON decode each; so a failure to set it is only worth a warning."""
        try:
            if not await client.keep_only_events(EVENT_TYPES_USED):
                log.info(
                    "ARI at %s has no event filter: unused events are dropped here", client.base_url
                )
        except TransportError as exc:
            log.warning(
                "could not set ARI's event filter (%s): unused events are dropped here", exc
            )

    async def _listen_until_replaced(self, listening: asyncio.Task[None]) -> None:
        """Wait until the event websocket closes (raising why it failed), or another websocket
        takes the app name over; then end the entries in progress here."""
        replaced = asyncio.create_task(self.replaced.wait())
        try:
            await asyncio.wait({listening, replaced}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            replaced.cancel()
        if not self.replaced.is_set():
            await listening
            log.warning("ARI event websocket closed")
            return
        # Not taking calls from here on: /readyz and the metrics say so at once.
        self.connected.clear()
        self.metrics.ari_connection(self.endpoint, connected=False)
        # Their channels' events go to the other websocket now, so they cannot go on here; REST
        # still works, so each goes back to the dialplan as interrupted and is stored.
        for session in list(self.sessions.values()):
            session.deliver_connection_lost()
        with contextlib.suppress(TimeoutError):
            await self.runner.wait_idle(REPLACED_HANDBACK_GRACE_S)

    async def _wait_until_app_released(self) -> None:
        """Return once no websocket holds the app name on this Asterisk, or ARI does not say
        (the usual reconnect takes over from there)."""
        app, url = self._settings.ari_app, self._settings.ari_url
        taken_since = last_reminder = time.monotonic()
        while True:
            await asyncio.sleep(REPLACED_RECHECK_S)
            client = self._client_factory(self._settings)
            try:
                held = await client.app_is_registered()
            except AriUnavailable as exc:
                log.warning("cannot tell whether Stasis app %r is still taken (%s)", app, exc)
                return
            finally:
                await client.close()
            if not held:
                log.warning(
                    "Stasis app %r on the Asterisk at %s is free again: reconnecting", app, url
                )
                return
            now = time.monotonic()
            if now - last_reminder >= REPLACED_REMIND_S:
                last_reminder = now
                log.error(
                    "Stasis app %r on the Asterisk at %s is still taken by another websocket "
                    "(%.0f s): this connection takes no calls",
                    app,
                    url,
                    now - taken_since,
                )

    async def _reconcile_sessions(self) -> None:
        """After a reconnect: entries whose channels vanished meanwhile end as interrupted."""
        client = self.client
        if client is None:
            return
        for session in list(self.sessions.values()):
            channel_id = session.info.channel_id
            try:
                alive = await client.channel_exists(channel_id)
            except TransportError:
                continue
            if not alive:
                log.info("channel %s vanished while ARI was disconnected", channel_id)
                session.deliver_connection_lost()

    def dispatch(self, raw: dict[str, Any]) -> None:
        """Route one event; runs inside the websocket reader, so it only enqueues."""
        try:
            event = parse_event(raw)
        except MalformedEvent as exc:
            log.error("dropped a malformed ARI event: %s", exc)
            return
        match event:
            case StasisStarted():
                self._start_session(event)
            case DtmfReceived():
                if session := self.sessions.get(event.channel_id):
                    session.deliver_digit(event.digit, duration_ms=event.duration_ms)
            case PlaybackFinished():
                if session := self.sessions.get(event.channel_id):
                    session.deliver_playback_finished(event.playback_id)
            case ChannelLeft():
                if session := self.sessions.get(event.channel_id):
                    session.deliver_hangup()
            case ApplicationReplaced():
                self._on_replaced(event)
            case None:
                pass

    def _on_replaced(self, event: ApplicationReplaced) -> None:
        log.error(
            "Stasis app %r on the Asterisk at %s was taken over by another websocket (another "
            "serve with ARI_APP=%s?): Asterisk sends its calls there now. This connection stops "
            "taking calls, and reconnects only once the name is free (checked every %.0f s); "
            "give each serve its own ARI_APP or its own Asterisks",
            event.application or self._settings.ari_app,
            self._settings.ari_url,
            self._settings.ari_app,
            REPLACED_RECHECK_S,
        )
        self.metrics.ari_app_replaced(self.endpoint)
        self.replaced.set()

    def _start_session(self, event: StasisStarted) -> None:
        channel = event.channel
        if is_own_channel(channel):
            return
        if channel.id in self.sessions:
            log.error("channel %s entered Stasis twice; ignoring the second", channel.id)
            return
        info = CallInfo(
            channel_id=channel.id,
            channel_name=channel.name,
            caller_number=channel.caller_number,
            caller_name=channel.caller_name,
            asterisk_id=event.asterisk_id,
            transport="ari",
            needs_answer=channel.state == "Ring",
        )
        session = self.runner.open(channel.id, info, event.args, self.port(channel.id))
        self.runner.start(channel.id, session, self._set_up)

    def port(self, channel_id: str) -> CallPort:
        """The channel as its session sees it."""
        return AriCallPort(self, channel_id)

    def _set_up(self, session: SessionInbox) -> None:
        self.tap_speech(session)
        self.prompts.prepare(session.params)  # rendered while the call is answered

    def tap_speech(self, session: SessionInbox) -> None:
        """Hear the caller of this entry (any channel: Stasis or FastAGI), if speech is on."""
        tap = self.speech_tap(session)
        if tap is not None:
            session.attach(tap)
            tap.start()

    def speech_tap(self, session: SessionInbox) -> AriSpeechTap | None:
        """A tap on the entry's channel through this Asterisk, not started yet; None when
        speech is off, ARI is disconnected or the entry takes keys only."""
        params = session.params
        if self._speech is None or self.client is None or params is None:
            return None
        if not params.accepts_speech:
            return None
        listener = SpeechListener(
            session,
            self._speech.recognizer,
            label=session.info.channel_id,
            max_digits=params.max_digits,
            metrics=self.metrics,
        )
        tap = AriSpeechTap(
            self.link,
            self._speech.receiver,
            listener,
            channel_id=session.info.channel_id,
            advertised_host=self._speech.advertised_host,
        )
        return tap

    async def has_channel(self, channel_id: str) -> bool:
        """Whether this Asterisk has the channel now (False while ARI is disconnected)."""
        client = self.client
        if client is None:
            return False
        try:
            return await client.channel_exists(channel_id)
        except TransportError:
            return False

    async def wait_idle(self, within: float) -> None:
        """Wait until no entry is in progress (every result stored)."""
        await self.runner.wait_idle(within)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Let running entries end as interrupted and store their rows before exiting."""
        await self.runner.close(grace)
        await self.link.close()


class AriApplications:
    """One :class:`AriApplication` per Asterisk in ARI_URL, side by side.

    Each has its own connection, reconnect loop, heartbeat and entries in progress (channel ids
    are only unique within one Asterisk), so an Asterisk going down touches its own calls only,
    and a channel is answered, played to, tapped and handed back through the Asterisk it came
    from. They share the store, the metrics, the speech resources and the text prompts.
    """

    def __init__(self, apps: Sequence[AriApplication]) -> None:
        if not apps:
            raise ValueError("no ARI application to run")
        self.apps = tuple(apps)
        self.prompts = self.apps[0].prompts

    def connected(self) -> list[bool]:
        """Each Asterisk's connection state, in ARI_URL's order."""
        return [app.connected.is_set() for app in self.apps]

    async def wait_connected(self) -> None:
        """Return once every Asterisk is connected."""
        for app in self.apps:
            await app.connected.wait()

    async def run(self) -> None:
        """Run every connection until cancelled (each reconnects on its own)."""
        async with asyncio.TaskGroup() as group:
            for app in self.apps:
                group.create_task(app.run(), name=f"ari-application-{app.endpoint}")

    def tap_speech(self, session: SessionInbox) -> None:
        """Hear a FastAGI entry's caller through the Asterisk its channel lives on."""
        if len(self.apps) == 1:
            self.apps[0].tap_speech(session)
            return
        params = session.params
        if params is not None and params.accepts_speech:
            session.attach(_TapWhereTheChannelIs(self.apps, session))

    async def wait_idle(self, within: float) -> None:
        """Wait until no entry is in progress on any Asterisk (every result stored)."""
        async with asyncio.timeout(within):
            await asyncio.gather(*(app.wait_idle(within) for app in self.apps))

    async def shutdown(self, grace: float = 5.0) -> None:
        await asyncio.gather(*(app.shutdown(grace) for app in self.apps))


class _TapWhereTheChannelIs:
    """A FastAGI entry's speech tap when several Asterisks are connected: the AGI environment
    does not say which one runs the channel, so each is asked and the tap opens on the one
    that has it. None, or more than one (channel ids collide across Asterisks that share no
    ``systemname``): the entry goes on with keys only."""

    def __init__(self, apps: Sequence[AriApplication], session: SessionInbox) -> None:
        self._session = session
        self._tap: AriSpeechTap | None = None
        self._caller_gone = False
        self._finding = asyncio.create_task(
            self._open(apps), name=f"find-{session.info.channel_id}"
        )

    async def _open(self, apps: Sequence[AriApplication]) -> None:
        channel_id = self._session.info.channel_id
        try:
            found = await asyncio.gather(*(app.has_channel(channel_id) for app in apps))
            owners = [app for app, has in zip(apps, found, strict=True) if has]
            if len(owners) != 1:
                log.warning(
                    "channel %s: speech is unavailable: %s",
                    channel_id,
                    "no connected Asterisk has this channel"
                    if not owners
                    else f"{len(owners)} Asterisks have a channel with this id "
                    "(give each a systemname in asterisk.conf)",
                )
                return
            self._tap = owners[0].speech_tap(self._session)
            if self._tap is not None:
                self._tap.start()
                if self._caller_gone:
                    self._tap.caller_gone()
        except Exception:
            log.exception("channel %s: the speech tap failed", channel_id)

    def caller_gone(self) -> None:
        self._caller_gone = True
        if self._tap is not None:
            self._tap.caller_gone()

    async def close(self) -> None:
        # A lookup still waiting on a stalled Asterisk must not hold up the entry's result.
        self._finding.cancel()
        await asyncio.gather(self._finding, return_exceptions=True)
        if self._tap is not None:
            await self._tap.close()
