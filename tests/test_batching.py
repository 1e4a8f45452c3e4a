"""Requests submitted in one turn of the event loop are handled by one call (pipeline/batching)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from app.pipeline.batching import Gatherer


async def test_what_one_turn_submits_is_handled_together_each_getting_its_own_result() -> None:
    calls: list[list[int]] = []

    async def handle(items: Sequence[int]) -> list[int | Exception]:
        calls.append(list(items))
        await asyncio.sleep(0)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    gatherer: Gatherer[int, int] = Gatherer(handle, asyncio.get_running_loop())
    results = await asyncio.gather(*(gatherer.submit(i) for i in range(5)), return_exceptions=True)
    assert calls == [[0, 1, 2, 3, 4]]
    assert results[0::2] == [0, 20, 40]
    assert [str(r) for r in results[1::2]] == ["odd 1", "odd 3"]
    # The next turn's requests make the next batch.
    assert await gatherer.submit(6) == 60
    assert calls[-1] == [6]


async def test_a_failing_handler_fails_its_batch_only() -> None:
    fail = True

    async def handle(items: Sequence[int]) -> list[int | Exception]:
        if fail:
            raise RuntimeError("bug")
        return list(items)

    gatherer: Gatherer[int, int] = Gatherer(handle, asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="bug"):
        await gatherer.submit(1)
    fail = False
    assert await gatherer.submit(2) == 2


async def test_a_cancelled_request_does_not_stop_its_batch() -> None:
    async def handle(items: Sequence[int]) -> list[int | Exception]:
        await asyncio.sleep(0.01)
        return list(items)

    gatherer: Gatherer[int, int] = Gatherer(handle, asyncio.get_running_loop())
    first, second = gatherer.submit(1), gatherer.submit(2)
    first.cancel()
    assert await second == 2
