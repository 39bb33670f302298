"""serve's garbage-collection tuning: start-up's objects frozen, full collections rarer."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ari_app.server import FULL_COLLECTION_AFTER, tune_garbage_collection


class Node:
    """A container that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def cycle() -> Node:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return first


@pytest.mark.usefixtures("restored_collector")
def test_live_objects_are_frozen_and_full_collections_come_less_often() -> None:
    kept = Node()
    tune_garbage_collection()
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects())  # no generation holds it
    assert gc.get_threshold()[2] == FULL_COLLECTION_AFTER > 10


@pytest.mark.usefixtures("restored_collector")
def test_garbage_an_earlier_freeze_kept_is_collected_at_the_next() -> None:
    connection = cycle()  # alive at the first freeze, garbage after it
    dropped_connection = weakref.ref(connection)
    tune_garbage_collection()
    del connection
    gc.collect()
    assert dropped_connection() is not None, "a frozen cycle is out of the collector's reach"
    tune_garbage_collection()
    assert dropped_connection() is None
