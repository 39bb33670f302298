"""Every check in order, and the ``ari-digits doctor`` command."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence

from ari_app.ari.client import AriClient
from ari_app.doctor.ari import check_ari
from ari_app.doctor.database import check_database
from ari_app.doctor.journal import check_journal
from ari_app.doctor.modules import SPEECH_MODULES, check_modules, fetch_modules, required_modules
from ari_app.doctor.report import CheckResult, Status, exit_status, summary
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
    # Lookups only: this client never opens the event websocket (see the package docstring).
    client = AriClient(settings.ari_url, settings.ari_user, settings.ari_password, settings.ari_app)
    try:
        ari = await check_ari(client, settings)
        report(ari)
        if ari.status is Status.PASS:
            async for result in _ari_checks(client, settings, prompts):
                report(result)
        else:
            for name in ("modules", "stasis-app", "sounds", "rtp-probe"):
                report(CheckResult(name, Status.SKIP, "needs ARI"))
    finally:
        await client.close()
    report(await check_database(settings.database_url))
    report(await check_journal(settings.journal_path))
    if has_text(prompts):
        report(await check_text_engine(settings))
    for result in await check_security(settings):
        report(result)
    return results


async def _ari_checks(
    client: AriClient, settings: Settings, extra_prompts: Sequence[Sequence[str]]
) -> AsyncIterator[CheckResult]:
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
