"""``validate=<pattern>`` runs on RE2 (linear time): no pattern stalls the event loop.

With Python's backtracking ``re``, ``(\\d+)+x`` over 24 keyed digits took 0.6 s and over 30
digits about 40 s, during which every call on the server stood still (issue #11).
"""

from __future__ import annotations

import time

import pytest

from ari_app.engine import DigitCollector
from ari_app.params import ParamError, parse_params
from ari_app.vocabulary import Status
from tests.engine_driver import Driver

# Catastrophic backtracking for a backtracking engine: nested or overlapping repetition that can
# split a run of digits in exponentially many ways, then fail on the last character.
WORST_PATTERNS = [
    r"(\d+)+x",
    r"(\d*)*x",
    r"(\d|\d)+x",
    r"(\d|1)*x",
    r"(1+)+2",
    r"((\d+)+)+#",
    r"(\d+\d+)+x",
    r"(\d?){30}\d{30}x",
]


@pytest.mark.parametrize("pattern", WORST_PATTERNS)
@pytest.mark.parametrize("length", [24, 30])
def test_worst_case_patterns_decide_in_linear_time(pattern: str, length: int) -> None:
    d = Driver.start(f"num_digits={length}", f"validate={pattern}", "max_attempts=1")
    d.finish_prompt()
    started = time.perf_counter()
    d.keys("1" * length)  # the last key runs the validation
    elapsed = time.perf_counter() - started
    assert d.finished.status is Status.INVALID
    # Backtracking takes seconds to minutes here; RE2 takes microseconds. Generous for slow CI.
    assert elapsed < 0.1, f"{pattern} over {length} digits took {elapsed:.3f} s"


def test_a_pattern_still_validates_as_written() -> None:
    d = Driver.start("num_digits=4", r"validate=(12|34)+", "max_attempts=2")
    d.finish_prompt()
    d.keys("1212")
    assert d.finished.status is Status.COMPLETED
    d = Driver.start("num_digits=4", r"validate=\d{3}", "max_attempts=1")
    d.finish_prompt()
    d.keys("1234")
    assert d.finished.status is Status.INVALID  # the whole entry must match, not a prefix


@pytest.mark.parametrize(
    "pattern",
    [r"(\d)\1", r"(?=1)\d+", r"(?!0)\d+", r"\d+(?<=5)", r"(?P<a>\d)(?P=a)"],
    ids=["backreference", "lookahead", "negative-lookahead", "lookbehind", "named-backref"],
)
def test_patterns_re2_cannot_run_are_refused_when_parsed(pattern: str) -> None:
    with pytest.raises(ParamError, match="backreferences and lookaround are not supported"):
        parse_params({"validate": pattern})
    collector = DigitCollector.from_arguments([f"validate={pattern}"])
    assert collector.params is None, "the entry must end as error, not run"


def test_luhn_is_still_a_named_rule() -> None:
    assert parse_params({"validate": "luhn"}).validate == "luhn"
