"""Build the speech benchmark's corpora (bench/corpora.py), check their invariants, and write a
few examples to listen to.

Checked (an AssertionError names the first failure): no non-digit sentence holds a digit word,
a homophone or a numeral, and ``words_to_digits`` reads no digit in any of them; every mixed
script reads back as exactly its digits; every clip is float32 mono 16 kHz in [-1, 1); every clip
made without line noise measures its target active level within 1 dB; line noise measures its
target RMS within 1 dB in the lead-in; human sources are balanced over speakers and digits.

    .venv/bin/python bench/corpora_check.py [--human-dir DIR] [--out DIR] [--per-category 20]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import (
    FILLER_AFTER,
    FILLER_FIRST,
    LEVELS_DBFS,
    LINE_NOISE_DBFS,
    LINE_RATE,
    NONDIGIT_SENTENCES,
    Clip,
    Source,
    active_level_dbfs,
    available_voices,
    breath,
    chime,
    human_sources,
    level_sweep,
    mixed_corpus,
    mixed_script,
    nondigit_corpus,
    read_wav,
    write_wav,
)

from ari_app.speech.recognizer import SAMPLE_RATE
from ari_app.speech.words import words_to_digits

FORBIDDEN = frozenset(
    {"zero", "oh", "o", "one", "two", "to", "too", "three", "four", "for", "five", "six"}
    | {"seven", "eight", "ate", "nine", "ten", "won", "nil", "nought", "naught", "niner"}
)
TOLERANCE_DB = 1.0
SATURATION = 0.97


def check_scripts() -> None:
    """The words themselves: nothing a digit parser reads as a digit, mixed = its digits."""
    for sentence in NONDIGIT_SENTENCES:
        words = set(re.findall(r"[a-z0-9']+", sentence.lower()))
        assert not words & FORBIDDEN, f"{sentence!r} holds {words & FORBIDDEN}"
        assert not re.search(r"\d", sentence), sentence
        assert words_to_digits(sentence).digits == "", sentence
    for template in FILLER_FIRST + FILLER_AFTER:
        filler = template.replace("{d}", "")
        assert not set(re.findall(r"[a-z']+", filler.lower())) & FORBIDDEN, template
    rng = np.random.default_rng(0)
    for i in range(2000):
        text, digits = mixed_script(rng, filler_after=i % 2 == 1)
        got = words_to_digits(text).digits
        assert got == digits, f"{text!r} reads {got}, not {digits}"
    print(
        f"scripts: {len(NONDIGIT_SENTENCES)} non-digit sentences read no digit; "
        f"2000 mixed scripts read exactly their digits"
    )


def check_audio(clips: Iterable[Clip]) -> None:
    for clip in clips:
        a = clip.audio
        assert a.dtype == np.float32 and a.ndim == 1, clip.name
        assert np.isfinite(a).all() and a.min() >= -1.0 and a.max() < 1.0, clip.name
        assert clip.kind in ("single", "string", "nondigit", "mixed"), clip.name


def saturated(clip: Clip) -> bool:
    """The line clipped it (G.711's largest value is 0.98 of full scale): too hot a level for
    its crest factor, as on a real line; its measured level is lower than the target."""
    return bool(np.abs(clip.audio).max() >= SATURATION)


def level_errors(clips: Iterable[Clip]) -> dict[str, list[float]]:
    """Measured minus target active level, per condition, for clips made without line noise
    that the line did not clip."""
    errors: dict[str, list[float]] = defaultdict(list)
    for clip in clips:
        if clip.level_dbfs is not None and clip.noise_dbfs is None and not saturated(clip):
            measured = active_level_dbfs(clip.audio, SAMPLE_RATE)
            errors[clip.condition].append(measured - clip.level_dbfs)
    return errors


def noise_errors(clips: Iterable[Clip], lead_s: float = 0.5) -> list[float]:
    """RMS of the lead-in (line noise only) minus the target noise level."""
    out = []
    for clip in clips:
        if clip.noise_dbfs is not None:
            lead = clip.audio[: int(0.9 * lead_s * SAMPLE_RATE)].astype(np.float64)
            out.append(10 * np.log10(np.mean(lead**2)) - clip.noise_dbfs)
    return out


def assert_within(errors: dict[str, list[float]], what: str) -> None:
    worst = max((abs(e), c) for c, es in errors.items() for e in es)
    assert worst[0] <= TOLERANCE_DB, f"{what}: {worst[1]} is {worst[0]:.2f} dB off its level"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  " + "  ".join(f"{x!s:<{w}}" for x, w in zip(row, widths, strict=True)))


def summarise(clips: Sequence[Clip], title: str, seconds: float) -> None:
    total = sum(len(c.audio) for c in clips) / SAMPLE_RATE
    print(f"\n{title}: {len(clips)} clips, {total / 60:.1f} min of audio, built in {seconds:.1f} s")
    by_condition: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        by_condition[clip.condition].append(clip)
    errors = level_errors(clips)
    rows = []
    for condition, group in by_condition.items():
        lines = Counter(("quiet" if c.noise_dbfs is None else f"n{c.noise_dbfs:g}") for c in group)
        err = errors.get(condition, [])
        rows.append(
            (
                condition,
                len(group),
                f"{np.mean([len(c.audio) for c in group]) / SAMPLE_RATE:.1f}",
                " ".join(f"{k}:{v}" for k, v in sorted(lines.items())),
                f"{max(map(abs, err)):.2f}" if err else "-",
            )
        )
    table(rows, ("condition", "clips", "mean s", "line noise", "max |level err| dB (quiet)"))
    levels = Counter("as-is" if c.level_dbfs is None else f"{c.level_dbfs:g}" for c in clips)
    print("  levels (dBFS): " + ", ".join(f"{k}: {v}" for k, v in sorted(levels.items())))
    clipped = Counter(f"{c.condition} @{c.level_dbfs:g}" for c in clips if saturated(c))
    if clipped:
        print("  clipped by the line: " + ", ".join(f"{k}: {v}" for k, v in clipped.items()))


def sweep_report(clips: Sequence[Clip], title: str) -> None:
    """Per level: the measured active level of every clip (quiet line), and the noise level."""
    print(f"\n{title}: {len(clips)} clips")
    by_level: dict[float, list[float]] = defaultdict(list)
    for clip in clips:
        assert clip.level_dbfs is not None
        by_level[clip.level_dbfs].append(active_level_dbfs(clip.audio, SAMPLE_RATE))
    clipped = Counter(c.level_dbfs for c in clips if saturated(c))
    rows = [
        (
            f"{level:g}",
            len(m),
            clipped.get(level, 0),
            f"{np.mean(m):.2f}",
            f"{min(m):.2f}",
            f"{max(m):.2f}",
            f"{max(abs(x - level) for x in m):.2f}",
        )
        for level, m in sorted(by_level.items(), reverse=True)
    ]
    table(rows, ("target dBFS", "clips", "clipped", "mean", "min", "max", "max |err|"))


def synthetic_sources(work: Path) -> list[Source]:
    """Sources at other rates than FSDD's: espeak-ng renders (22.05 kHz) from the cache the
    corpora left in ``work``, and 8 kHz synthesis with a large crest factor (chime, breath)."""
    rng = np.random.default_rng(5)
    sources = [
        Source(f"espeak:{path.stem}", "", *read_wav(path), "mixed")
        for path in sorted((work / "espeak").glob("*.wav"))[:6]
    ]
    sources.append(Source("chime", "", chime(rng), LINE_RATE, "nondigit"))
    sources.append(Source("breath", "", breath(rng), LINE_RATE, "nondigit"))
    return sources


def write_examples(out: Path, groups: dict[str, Sequence[Clip]]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for prefix, clips in groups.items():
        for clip in clips:
            slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{prefix}_{clip.name}").strip("_")
            write_wav(out / f"{slug[:120]}.wav", clip.audio, SAMPLE_RATE)
            written += 1
    return written


def one_per_condition(clips: Iterable[Clip]) -> list[Clip]:
    """A clip of each condition, stepping through the clips' lines (levels x line noise)."""
    groups: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        groups[clip.condition].append(clip)
    return [group[(k * 5) % len(group)] for k, group in enumerate(groups.values())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--human-dir", type=Path, help="FSDD-style 8 kHz recordings")
    parser.add_argument("--out", type=Path, help="write example 16 kHz WAVs here")
    parser.add_argument("--per-category", type=int, default=20)
    parser.add_argument("--mixed", type=int, default=100)
    parser.add_argument("--singles-limit", type=int, default=300)
    parser.add_argument("--strings", type=int, default=80)
    args = parser.parse_args()

    voices = available_voices()
    print(f"espeak-ng voices: {', '.join(voices)}")
    check_scripts()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.monotonic()
        nondigit = nondigit_corpus(work, per_category=args.per_category)
        summarise(nondigit, "non-digit corpus", time.monotonic() - started)
        check_audio(nondigit)
        assert all(c.digits == "" and c.kind == "nondigit" for c in nondigit)
        assert_within(level_errors(nondigit), "non-digit")

        started = time.monotonic()
        mixed = mixed_corpus(work, count=args.mixed)
        summarise(mixed, "mixed corpus", time.monotonic() - started)
        check_audio(mixed)
        for clip in mixed:
            assert clip.kind == "mixed" and 4 <= len(clip.digits) <= 10, clip.name
            assert words_to_digits(clip.text).digits == clip.digits, clip.name
        assert_within(level_errors(mixed), "mixed")
        print(f"  e.g. {mixed[0].text!r} -> {mixed[0].digits}; {mixed[4].text!r}")

        noise = noise_errors([*nondigit, *mixed])
        print(
            f"\nline noise in the lead-in, measured - target: mean {np.mean(noise):+.2f} dB, "
            f"worst {max(noise, key=abs):+.2f} dB over {len(noise)} clips"
        )
        assert max(map(abs, noise)) <= TOLERANCE_DB

        sources = synthetic_sources(work)
        started = time.monotonic()
        levels = (-10.0, -20.0, -30.0, -40.0, -50.0, *LEVELS_DBFS)
        synthetic = level_sweep(sources, levels)
        sweep_report(
            synthetic, f"level sweep, synthetic sources ({time.monotonic() - started:.1f} s)"
        )
        check_audio(synthetic)
        assert_within(level_errors(synthetic), "synthetic sweep")

        examples: dict[str, Sequence[Clip]] = {
            "nondigit": one_per_condition(nondigit),
            "mixed": [mixed[i] for i in (0, 4, 5, 10, 15, 19) if i < len(mixed)],
        }
        if args.human_dir:
            started = time.monotonic()
            human = human_sources(
                args.human_dir, singles_limit=args.singles_limit, strings=args.strings, seed=1234
            )
            singles = [s for s in human if s.kind == "single"]
            strings = [s for s in human if s.kind == "string"]
            print(
                f"\nhuman sources: {len(singles)} singles, {len(strings)} strings "
                f"({time.monotonic() - started:.1f} s); rates {sorted({s.rate for s in human})}"
            )
            per_speaker = Counter(s.name.split("_")[1] for s in singles)
            per_digit = Counter(s.digits for s in singles)
            print(f"  singles per speaker {dict(sorted(per_speaker.items()))}")
            print(f"  singles per digit {dict(sorted(per_digit.items()))}")
            lengths = Counter(len(s.digits) for s in strings)
            print(f"  string lengths {dict(sorted(lengths.items()))}")
            assert max(per_digit.values()) - min(per_digit.values()) <= len(per_speaker)
            assert max(per_speaker.values()) - min(per_speaker.values()) <= 10
            started = time.monotonic()
            quiet = level_sweep(human)
            loud_noise = level_sweep(human, noise_dbfs=LINE_NOISE_DBFS)
            seconds = time.monotonic() - started
            sweep_report(quiet, f"level sweep, human, quiet line ({seconds / 2:.1f} s)")
            check_audio([*quiet, *loud_noise])
            assert_within(level_errors(quiet), "human sweep")
            sweep_report(loud_noise, f"level sweep, human, line noise {LINE_NOISE_DBFS:g} dBFS")
            print("  (with line noise the measure counts noise within ~30 dB of the loudest frame:")
            print("   short quiet clips read low; the talker's level was set before the noise)")
            noise = noise_errors(loud_noise)
            print(f"  line noise in the lead-in: worst {max(noise, key=abs):+.2f} dB")
            assert max(map(abs, noise)) <= TOLERANCE_DB
            examples["sweep"] = [c for c in quiet if c.kind == "string"][:5]
            examples["sweep-noise"] = [c for c in loud_noise if c.kind == "string"][:5]

    if args.out:
        count = write_examples(args.out, examples)
        print(f"\nwrote {count} example WAVs (16 kHz) to {args.out}")
    print("\nall checks passed")


if __name__ == "__main__":
    main()
