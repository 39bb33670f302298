"""Prometheus metrics: every metric the service exposes on ``/metrics``, in one place.

One :class:`Metrics` per service instance, holding its own ``CollectorRegistry`` (never
prometheus-client's global default one), so that tests and several applications in one process
stay independent. It is created by :func:`ari_app.server.running_service` and passed down
explicitly, like the settings and the store; a component built without one (a test, the CLI's
store) records into a private instance that nobody scrapes.

Where each metric is observed (one place each):

- entries, digits, time to first digit, entry duration, event handling latency:
  :class:`ari_app.call.CallSession` (both transports);
- ARI connection state and reconnects: :meth:`ari_app.ari.app.AriApplication.run`;
- speech decode latency: :class:`ari_app.speech.listener.SpeechListener`, around the
  recogniser call; the recogniser's own counters are read at scrape time
  (:meth:`Metrics.watch_recognizer`);
- database write latency and errors: the store's write transaction
  (:class:`ari_app.store.repository.Store`);
- the journal's backlog (read at scrape time), its replays and failures:
  :class:`ari_app.journal.Journal`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ari_app.vocabulary import Source, Status, Transport

__all__ = ["DB_OPERATIONS", "Metrics", "discarded_metrics"]

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)
PREFIX: Final = "ari_digits"
# The store's write transactions, as labelled on the database metrics.
DB_OPERATIONS: Final = (
    "start_entry",
    "finish_entries",
    "mark_stale",
    "cache_daily_stats",
    "forget_daily_stats",
)

# Callers take seconds to key the first digit; an entry lasts up to max_duration per attempt.
FIRST_DIGIT_BUCKETS: Final = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 30.0, 60.0)
ENTRY_BUCKETS: Final = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0)
# Event handling is a queue hop inside the event loop: anything past a few ms is a loaded loop.
EVENT_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
# Decoding one utterance on the CPU takes a few hundred ms; past a second callers notice.
DECODE_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
DB_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The service's metrics and the one registry they live in."""

    def __init__(self, *, ari_endpoints: int = 1) -> None:
        """``ari_endpoints``: how many Asterisks ARI_URL lists (each its own connection)."""
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        registry = self.registry
        self._entries_started = Counter(
            f"{PREFIX}_entries_started_total",
            "Entries started (one per Stasis() or AGI() collection).",
            ["transport"],
            registry=registry,
        )
        self._entries_finished = Counter(
            f"{PREFIX}_entries_finished_total",
            "Entries finished, by final status (hangup and interrupted included).",
            ["transport", "status"],
            registry=registry,
        )
        self._digits = Counter(
            f"{PREFIX}_digits_total",
            "Digits collected, by how the caller gave them (counted when the entry ends).",
            ["source"],
            registry=registry,
        )
        self._first_digit = Histogram(
            f"{PREFIX}_time_to_first_digit_seconds",
            "From the entry's start to its first digit, for entries with a digit.",
            ["transport"],
            buckets=FIRST_DIGIT_BUCKETS,
            registry=registry,
        )
        self._entry_duration = Histogram(
            f"{PREFIX}_entry_duration_seconds",
            "From the entry's start to its result (before storing it).",
            ["transport"],
            buckets=ENTRY_BUCKETS,
            registry=registry,
        )
        self._event_handling = Histogram(
            f"{PREFIX}_event_handling_seconds",
            "From a channel event's arrival at the adapter (ARI: in dispatch) to the call task "
            "having handled it (keys, prompt ends, hangups).",
            ["transport"],
            buckets=EVENT_BUCKETS,
            registry=registry,
        )
        self._ari_connected = Gauge(
            f"{PREFIX}_ari_connected",
            "1 while the ARI event websocket is connected, else 0; `endpoint` is the Asterisk's "
            "position in ARI_URL (1, 2, ...: this open route names no hosts).",
            ["endpoint"],
            registry=registry,
        )
        self._ari_reconnects = Counter(
            f"{PREFIX}_ari_reconnects_total",
            "Successful reconnections to ARI after a lost connection, by `endpoint`.",
            ["endpoint"],
            registry=registry,
        )
        self._ari_app_replaced = Counter(
            f"{PREFIX}_ari_app_replaced_total",
            "Times another websocket took the Stasis app name over on an Asterisk (another "
            "serve with the same ARI_APP), by `endpoint`: that connection stops taking calls.",
            ["endpoint"],
            registry=registry,
        )
        self._speech_decode = Histogram(
            f"{PREFIX}_speech_decode_seconds",
            "One utterance through the recogniser: waiting for a worker plus decoding.",
            ["vocabulary"],
            buckets=DECODE_BUCKETS,
            registry=registry,
        )
        self._speech_rejected = Counter(
            f"{PREFIX}_speech_rejected_total",
            "Utterances that gave no digits, by reason (not_digits: talk; unclear; no_speech).",
            ["reason"],
            registry=registry,
        )
        self._db_write = Histogram(
            f"{PREFIX}_db_write_seconds",
            "One database write transaction, from its start to its commit.",
            ["operation"],
            buckets=DB_BUCKETS,
            registry=registry,
        )
        self._db_errors = Counter(
            f"{PREFIX}_db_write_errors_total",
            "Database write transactions that failed.",
            ["operation"],
            registry=registry,
        )
        self._journal_records = Gauge(
            f"{PREFIX}_journal_records",
            "Records in the local journal not yet written to the database (journal depth).",
            registry=registry,
        )
        self._journal_oldest = Gauge(
            f"{PREFIX}_journal_oldest_unsent_seconds",
            "Age of the oldest journal record not yet written to the database (0: none).",
            registry=registry,
        )
        self._journal_replayed = Counter(
            f"{PREFIX}_journal_replayed_entries_total",
            "Entry outcomes written from the journal into the database (rate: replay rate).",
            registry=registry,
        )
        self._journal_database_failures = Counter(
            f"{PREFIX}_journal_database_failures_total",
            "Attempts to write journal records into the database that failed (then retried).",
            registry=registry,
        )
        self._journal_write_failures = Counter(
            f"{PREFIX}_journal_write_failures_total",
            "Records the local journal could not write (disk full or unwritable).",
            registry=registry,
        )
        # Every expected series exists from the start (at 0), so rate() and absent() queries
        # work before the first call.
        for transport in Transport:
            self._entries_started.labels(transport)
            self._first_digit.labels(transport)
            self._entry_duration.labels(transport)
            self._event_handling.labels(transport)
            for status in Status:
                self._entries_finished.labels(transport, status.value)
        for source in Source:
            self._digits.labels(source.value)
        for operation in DB_OPERATIONS:
            self._db_write.labels(operation)
            self._db_errors.labels(operation)
        for endpoint in range(1, ari_endpoints + 1):
            self._ari_connected.labels(str(endpoint)).set(0)
            self._ari_reconnects.labels(str(endpoint))
            self._ari_app_replaced.labels(str(endpoint))

    def _child(self, metric: _Metric, *values: str) -> _Metric:
        """``metric.labels(*values)``, remembered: ``labels`` takes a lock and checks its
        arguments at every call, which showed in the profile of a busy server (each label
        here comes from a small fixed set)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child  # type: ignore[return-value]  # stored by the metric it came from

    # --- calls ----------------------------------------------------------------------------

    def entry_started(self, transport: str) -> None:
        self._child(self._entries_started, transport).inc()

    def entry_finished(
        self,
        transport: str,
        status: Status,
        duration_s: float,
        *,
        digit_sources: Sequence[Source],
        first_digit_s: float | None,
    ) -> None:
        """``digit_sources``: one per digit kept; ``first_digit_s``: when the first came."""
        self._child(self._entries_finished, transport, status.value).inc()
        self._child(self._entry_duration, transport).observe(duration_s)
        for source in digit_sources:
            self._child(self._digits, source.value).inc()
        if first_digit_s is not None:
            self._child(self._first_digit, transport).observe(first_digit_s)

    def event_handled(self, transport: str, latency_s: float) -> None:
        self._child(self._event_handling, transport).observe(latency_s)

    # --- ARI ------------------------------------------------------------------------------

    def ari_connection(self, endpoint: int, *, connected: bool) -> None:
        self._ari_connected.labels(str(endpoint)).set(1 if connected else 0)

    def ari_reconnected(self, endpoint: int) -> None:
        self._ari_reconnects.labels(str(endpoint)).inc()

    def ari_app_replaced(self, endpoint: int) -> None:
        self._ari_app_replaced.labels(str(endpoint)).inc()

    # --- speech ---------------------------------------------------------------------------

    def speech_decoded(self, vocabulary: str, seconds: float) -> None:
        self._speech_decode.labels(vocabulary).observe(seconds)

    def speech_rejected(self, reason: str) -> None:
        self._speech_rejected.labels(reason).inc()

    def watch_recognizer(self, read_stats: Callable[[], RecognizerCounters]) -> None:
        """Expose the recogniser's own counters, read at each scrape."""
        self.registry.register(_RecognizerCollector(read_stats))

    # --- database -------------------------------------------------------------------------

    @contextlib.contextmanager
    def db_write(self, operation: str) -> Iterator[None]:
        """Time one write transaction; count it as an error if it raises."""
        started = time.perf_counter()
        try:
            yield
        except Exception:  # not a cancellation: that is no fault of the database
            self._child(self._db_errors, operation).inc()
            raise
        finally:
            self._child(self._db_write, operation).observe(time.perf_counter() - started)

    # --- journal --------------------------------------------------------------------------

    def watch_journal(self, read_backlog: Callable[[], JournalBacklogView]) -> None:
        """Read the journal's depth and oldest record at each scrape."""
        self._journal_records.set_function(lambda: read_backlog().records)
        self._journal_oldest.set_function(lambda: read_backlog().oldest_age_s or 0.0)

    def journal_replayed(self, entries: int) -> None:
        self._journal_replayed.inc(entries)

    def journal_database_failed(self) -> None:
        self._journal_database_failures.inc()

    def journal_write_failed(self) -> None:
        self._journal_write_failures.inc()

    # --- exposition -----------------------------------------------------------------------

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated from the ``Accept`` header
        (Prometheus text format unless OpenMetrics is asked for)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class JournalBacklogView(Protocol):
    @property
    def records(self) -> int: ...
    @property
    def oldest_age_s(self) -> float | None: ...


class RecognizerCounters(Protocol):
    """What the recogniser counts (``ari_app.speech.recognizer.RecognizerStats``), named here
    so that this module does not load the recogniser (and numpy) into every process."""

    @property
    def decoded(self) -> int: ...
    @property
    def fallbacks(self) -> int: ...
    @property
    def queued_now(self) -> int: ...
    @property
    def running_now(self) -> int: ...
    @property
    def behind_realtime(self) -> int: ...
    @property
    def refused_overloaded(self) -> int: ...
    @property
    def failed(self) -> int: ...


class _RecognizerCollector(Collector):
    """The recogniser keeps its own counters (behind real time, fallbacks, ...) under its lock;
    reading them at scrape time keeps the recogniser free of any metrics code."""

    def __init__(self, read_stats: Callable[[], RecognizerCounters]) -> None:
        self._read_stats = read_stats

    def collect(self) -> Iterable[Metric]:
        stats = self._read_stats()
        counters = (
            ("decodes", "Utterances recognised.", stats.decoded),
            (
                "fallback_decodes",
                "Utterances decoded again segment by segment (the whole looked wrong).",
                stats.fallbacks,
            ),
            (
                "behind_realtime_decodes",
                "Decodes slower than the audio, or that waited too long for a worker.",
                stats.behind_realtime,
            ),
            (
                "overloaded_refusals",
                "Utterances refused because the decode queue was full (heard as silence).",
                stats.refused_overloaded,
            ),
            ("failed_decodes", "Decodes that raised.", stats.failed),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(f"{PREFIX}_speech_{name}_total", documentation, value=value)
        yield GaugeMetricFamily(
            f"{PREFIX}_speech_queued_decodes",
            "Utterances waiting for a decode worker now.",
            value=stats.queued_now,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_speech_running_decodes",
            "Decodes in progress now.",
            value=stats.running_now,
        )


@functools.cache
def discarded_metrics() -> Metrics:
    """Where a per-call component built without the service's metrics records (unit tests,
    tools): one shared instance nobody scrapes, not a new registry for every call."""
    return Metrics()
