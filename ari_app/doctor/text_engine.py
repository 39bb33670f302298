"""``tts-engine``: the text-to-speech engine renders a prompt (only when a prompt has text)."""

from __future__ import annotations

import asyncio
import shutil

from ari_app.doctor.report import CheckResult, Status
from ari_app.settings import Settings
from ari_app.tts import EspeakNg, TtsError, telephone_wav


async def check_text_engine(settings: Settings) -> CheckResult:
    """Render a short text as ``serve`` would: catches a missing espeak-ng and a bad voice,
    which would otherwise only show as beeps (and logged errors) during calls."""
    name = "tts-engine"
    engine = EspeakNg(voice=settings.tts_voice, words_per_minute=settings.tts_rate)
    if await asyncio.to_thread(shutil.which, engine.executable) is None:
        return CheckResult(
            name,
            Status.FAIL,
            f"{engine.executable} is not installed: tts: prompts would play a beep",
            "install it (Debian: apt-get install espeak-ng)",
        )
    try:
        audio = await engine.synthesize("Please key your number")
        await asyncio.to_thread(telephone_wav, audio)
    except TtsError as exc:
        return CheckResult(
            name,
            Status.FAIL,
            f"{engine.identity} cannot render a prompt: {exc}",
            "set TTS_VOICE to a voice espeak-ng --voices lists",
        )
    return CheckResult(name, Status.PASS, f"{engine.identity} renders text prompts")
