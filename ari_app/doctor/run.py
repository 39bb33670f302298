"""Every check in order, and the ``ari-digits doctor`` command."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence

from ari_app.ari.client import AriClient
from ari_app.doctor.ari import check_ari
from ari_app.doctor.asterisk_ids import check_asterisk_ids, fetch_entity_id
from ari_app.doctor.database import check_database
from ari_app.doctor.journal import check_journal
from ari_app.doctor.modules import SPEECH_MODULES, check_modules, fetch_modules, required_modules
from ari_app.doctor.report import CheckResult, Status, exit_status, on_asterisk, summary
from ari_app.doctor.rtp_probe import probe_rtp
from ari_app.doctor.security import check_security
from ari_app.doctor.sounds import check_sounds, has_text, parse_prompts, prompt_sounds
from ari_app.doctor.stasis_app import fetch_stasis_app
from ari_app.doctor.text_engine import check_text_engine
from ari_app.settings import Settings


async def run_checks(
    settings: Settings,
    *,
    extra_prompts: Sequence[str] = (),
    on_result: Callable[[CheckResult], None] = lambda _result: None,
) -> list[CheckResult]:
    """Every check in order; ``on_result`` sees each result as soon as it is known.
    ``extra_prompts``: media lists as the dialplan passes them (``--prompt``)."""
    results: list[CheckResult] = []

    def report(result: CheckResult) -> None:
        results.append(result)
        on_result(result)

    prompts, refused = parse_prompts(extra_prompts)
    for result in refused:
        report(result)
    several = bool(settings.more_ari_urls)
    entity_ids: dict[int, str | None] = {}
    for endpoint, url in enumerate(settings.ari_urls, start=1):
        one = settings.for_asterisk(url)
        # Lookups only: this client never opens the event websocket (see the package docstring).
        client = AriClient(url, one.ari_user, one.ari_password, one.ari_app)
        try:
            reachable = False
            async for result in _asterisk_checks(client, one, prompts):
                reachable = reachable or (result.name == "ari" and result.status is Status.PASS)
                report(on_asterisk(result, endpoint) if several else result)
            if several and reachable:
                entity_ids[endpoint] = await fetch_entity_id(client)
        finally:
            await client.close()
    if several:
        report(check_asterisk_ids(entity_ids))
    report(await check_database(settings.database_url))
    report(await check_journal(settings.journal_path))
    if has_text(prompts):
        report(await check_text_engine(settings))
    for result in await check_security(settings):
        report(result)
    return results


async def _asterisk_checks(
    client: AriClient, settings: Settings, extra_prompts: Sequence[Sequence[str]]
) -> AsyncIterator[CheckResult]:
    """The checks of the one Asterisk at ``settings.ari_url``."""
    ari = await check_ari(client, settings)
    yield ari
    if ari.status is not Status.PASS:
        for name in ("modules", "stasis-app", "sounds", "rtp-probe"):
            yield CheckResult(name, Status.SKIP, "needs ARI")
        return
    loaded = await fetch_modules(client)
    if isinstance(loaded, CheckResult):
        yield loaded
        loaded = {}
    else:
        for result in check_modules(loaded, required_modules(settings, extra_prompts)):
            yield result
    yield await fetch_stasis_app(client, settings.ari_app)
    yield await check_sounds(client, prompt_sounds(extra_prompts))
    if not settings.speech:
        yield CheckResult("rtp-probe", Status.SKIP, "SPEECH=off: no audio is tapped")
        return
    absent = [r.label for r in SPEECH_MODULES if not r.met_by(loaded)]
    if absent:
        yield CheckResult("rtp-probe", Status.SKIP, f"needs {', '.join(absent)}")
        return
    yield await probe_rtp(settings)


async def doctor(settings: Settings, extra_prompts: Sequence[str] = ()) -> int:
    """The ``doctor`` command: print each check as it completes; the exit status."""
    # Alembic's migration context logs at INFO when it reads the revision: noise in a report.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    results = await run_checks(
        settings, extra_prompts=extra_prompts, on_result=lambda r: print(r.line(), flush=True)
    )
    print(summary(results))
    return exit_status(results)
