"""The heap a server holds for its life kept out of full collections (service.repository.settle_heap)."""

from __future__ import annotations

import gc
import weakref

from service.repository import settle_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_settling_freezes_what_is_alive_and_frees_a_frozen_cycle_at_the_next_settle() -> None:
    try:
        node = _Node()
        ref = weakref.ref(node)
        settle_heap()  # as after a start or a swap: the node is alive, so it is frozen with the rest
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None  # a full collection no longer walks it, so its cycle stays
        settle_heap()  # as after an unload: unfrozen, collected, the rest frozen again
        assert ref() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
