"""Micro-batching of text queries: the queries that arrive while the model threads are busy are searched together.

A batch encodes its queries with each model in one call and looks them up in FAISS in one call, so under load a
query costs little more than its re-ranking; when the service is idle a query runs alone at once. At most
``workers`` batches run at the same time, one per model thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Sequence

#: Largest batch: bounds the wait of the last query of a batch.
MAX_BATCH = 16


class QueryBatcher:
    """Runs ``search(queries, top)`` (a blocking function returning one result per query) on ``executor`` for
    batches of waiting queries with the same ``top``; ``submit`` answers one query."""

    def __init__(self, search: Callable[[Sequence[str], int], list[Any]], executor: Executor, workers: int) -> None:
        self.search = search
        self.executor = executor
        self.workers = workers
        self.waiting: list[tuple[str, int, asyncio.Future]] = []
        self.running = 0
        self.tasks: set[asyncio.Task] = set()

    async def submit(self, query: str, top: int) -> Any:
        """The result of ``query``; raises what searching it alone raises."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((query, top, future))
        if self.running < self.workers:
            self.running += 1
            task = asyncio.create_task(self._drain())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                top = self.waiting[0][1]
                batch = [item for item in self.waiting if item[1] == top][:MAX_BATCH]
                self.waiting = [item for item in self.waiting if item not in batch]
                try:
                    outcomes = await loop.run_in_executor(self.executor, self._run, [q for q, _, _ in batch], top)
                except Exception as exc:  # noqa: BLE001 -- e.g. the executor shut down: every query gets it
                    outcomes = [(False, exc)] * len(batch)
                for (_, _, future), (ok, value) in zip(batch, outcomes):
                    if not future.done():
                        future.set_result(value) if ok else future.set_exception(value)
        finally:
            self.running -= 1

    def _run(self, queries: list[str], top: int) -> list[tuple[bool, Any]]:
        """(True, result) or (False, exception) per query; a failing batch is retried query by query, so one bad
        query fails alone."""
        try:
            return [(True, result) for result in self.search(queries, top)]
        except Exception as exc:  # noqa: BLE001 -- handed to the request(s); a batch is retried one by one
            if len(queries) == 1:
                return [(False, exc)]
        outcomes: list[tuple[bool, Any]] = []
        for query in queries:
            try:
                outcomes.append((True, self.search([query], top)[0]))
            except Exception as exc:  # noqa: BLE001 -- handed to the request that sent this query
                outcomes.append((False, exc))
        return outcomes
