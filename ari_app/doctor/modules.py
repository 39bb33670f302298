"""``module …``: the Asterisk modules this configuration uses are loaded and running."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ari_app.ari.client import AriClient
from ari_app.doctor.lookups import LOOKUP_ERRORS, lookup, lookup_failed, named_entries
from ari_app.doctor.report import CheckResult, Status
from ari_app.doctor.sounds import has_text
from ari_app.settings import Settings


@dataclass(frozen=True)
class ModuleRequirement:
    """One module (or any one of ``names``, for alternatives) and why the app needs it."""

    names: tuple[str, ...]
    why: str
    also_load: str = ""  # dependencies autoload=no does not pull in, for the fix line

    @property
    def label(self) -> str:
        return "|".join(self.names)

    def met_by(self, loaded: Mapping[str, str]) -> bool:
        return any(loaded.get(name) == "Running" for name in self.names)


CORE_MODULES = (
    ModuleRequirement(
        ("res_ari_events",), "the event websocket that registers the Stasis app and delivers calls"
    ),
    ModuleRequirement(("res_stasis",), "Stasis, the core of every ARI application"),
    ModuleRequirement(("app_stasis",), "the dialplan's Stasis() that hands callers to the app"),
    ModuleRequirement(
        ("res_ari_channels",),
        "answering, prompts, DIGITS* variables, returning callers to the dialplan",
    ),
    ModuleRequirement(("res_stasis_answer",), "answering callers who reach Stasis() unanswered"),
    ModuleRequirement(("res_stasis_playback",), "playing prompts and read-backs"),
    ModuleRequirement(("res_ari_playbacks",), "stopping a prompt when the caller barges in"),
)
SPEECH_MODULES = (
    ModuleRequirement(("res_stasis_snoop",), "speech: the spy=in snoop that hears the caller"),
    ModuleRequirement(
        ("chan_rtp",),
        "speech: the externalMedia channel that sends the audio to RTP_HOST",
        also_load="res_rtp_multicast.so",
    ),
    ModuleRequirement(("res_rtp_asterisk",), "speech: the RTP stack chan_rtp sends with"),
    ModuleRequirement(("res_ari_bridges",), "speech: the bridge joining snoop and externalMedia"),
    ModuleRequirement(
        ("bridge_simple", "bridge_softmix"), "speech: mixing in that bridge, either module will do"
    ),
    ModuleRequirement(
        ("codec_resample",), "speech: 8 kHz caller audio to the slin16 externalMedia sends"
    ),
)
AGI_MODULES = (
    ModuleRequirement(
        ("res_agi",),
        "FastAGI, on as AGI_PORT is set: the dialplan's AGI()",
        also_load="res_speech.so",
    ),
)


TEXT_PROMPT_MODULES = (
    ModuleRequirement(
        ("res_http_media_cache",),
        "text prompts (tts:): Asterisk fetches the rendered audio from MEDIA_BASE_URL",
        also_load="res_curl.so",
    ),
)


def required_modules(
    settings: Settings, prompts: Iterable[Sequence[str]] = ()
) -> list[ModuleRequirement]:
    """The modules this configuration uses: speech and FastAGI only when they are on, the
    remote-media ones only when a prompt (a parsed media list) has text."""
    modules = list(CORE_MODULES)
    if settings.speech:
        modules += SPEECH_MODULES
    if settings.agi_port is not None:
        modules += AGI_MODULES
    if has_text(prompts):
        modules += TEXT_PROMPT_MODULES
    return modules


def check_modules(
    loaded: Mapping[str, str], requirements: Sequence[ModuleRequirement]
) -> list[CheckResult]:
    """``loaded``: module name (without ``.so``) to its status, as ``GET /asterisk/modules``."""
    results = []
    for requirement in requirements:
        name = f"module {requirement.label}"
        if requirement.met_by(loaded):
            results.append(CheckResult(name, Status.PASS, f"running ({requirement.why})"))
            continue
        states = [f"{n} {loaded[n]}" for n in requirement.names if n in loaded]
        load = [f"'load => {requirement.names[0]}.so'"]
        if requirement.also_load:
            # autoload = no loads no dependencies: the module would fail without it.
            load.insert(0, f"'load => {requirement.also_load}'")
        results.append(
            CheckResult(
                name,
                Status.FAIL,
                f"{', '.join(states) or 'not loaded'}, needed for {requirement.why}",
                f"add {' then '.join(load)} to modules.conf, or 'module load' on the Asterisk CLI",
            )
        )
    return results


async def fetch_modules(client: AriClient) -> dict[str, str] | CheckResult:
    name, request = "modules", "GET /asterisk/modules"
    try:
        status, body = await lookup(client, "asterisk/modules")
        if status == 200:
            modules = named_entries(body, "modules")
            return {str(m["name"]).removesuffix(".so"): str(m.get("status", "")) for m in modules}
    except LOOKUP_ERRORS as exc:
        return lookup_failed(name, request, exc)
    return CheckResult(
        name,
        Status.FAIL,
        f"cannot list Asterisk's modules: {request} answered HTTP {status}",
        "load res_ari_asterisk.so",
    )
