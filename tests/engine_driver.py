"""A scripted caller and a virtual clock around the sans-I/O engine, for rule tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from ari_app.engine import (
    Action,
    CancelTimer,
    ConnectionLost,
    Digit,
    DigitCollector,
    Event,
    Finish,
    Hangup,
    Play,
    PromptFinished,
    Result,
    Source,
    Start,
    StartTimer,
    StopPlayback,
    Timer,
    TimerFired,
)


@dataclass
class Driver:
    collector: DigitCollector
    now: float = 100.0
    timers: dict[Timer, tuple[float, int]] = field(default_factory=dict)
    playing: Play | None = None
    played: list[Play] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    result: Result | None = None

    @classmethod
    def start(cls, *arguments: str) -> Driver:
        driver = cls(DigitCollector.from_arguments(list(arguments)))
        driver.send(Start(driver.now))
        return driver

    def send(self, event: Event) -> list[Action]:
        actions = self.collector.handle(event)
        self.actions += actions
        for action in actions:
            match action:
                case Play():
                    self.playing = action
                    self.played.append(action)
                case StopPlayback():
                    self.stopped.append(action.playback)
                    if self.playing and self.playing.playback == action.playback:
                        self.playing = None
                case StartTimer():
                    self.timers[action.timer] = (self.now + action.seconds, action.token)
                case CancelTimer():
                    self.timers.pop(action.timer, None)
                case Finish():
                    assert self.result is None, "finished twice"
                    self.result = action.result
        return actions

    def advance(self, seconds: float) -> None:
        """Move the clock, firing timers that fall due, earliest first."""
        deadline = self.now + seconds
        while self.result is None:
            due = [(at, name, token) for name, (at, token) in self.timers.items() if at <= deadline]
            if not due:
                break
            at, name, token = min(due)
            self.now = at
            del self.timers[name]
            self.send(TimerFired(name, token, self.now))
        self.now = deadline

    def finish_prompt(self) -> None:
        assert self.playing is not None, "nothing is playing"
        playback, self.playing = self.playing.playback, None
        self.send(PromptFinished(playback, self.now))

    def keys(self, keys: str, gap: float = 0.3, source: Source = Source.KEY) -> None:
        for key in keys:
            self.advance(gap)
            self.send(Digit(key, self.now, source, 120 if source is Source.KEY else None))

    def hangup(self) -> None:
        self.send(Hangup(self.now))

    def lose_connection(self) -> None:
        self.send(ConnectionLost(self.now))

    @property
    def finished(self) -> Result:
        assert self.result is not None, "the entry has not finished"
        return self.result
