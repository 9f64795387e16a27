"""Background tasks that stay referenced until they finish (the event loop keeps only
weak references, so a task nobody holds can be garbage-collected mid-flight)."""

from __future__ import annotations

import asyncio


def spawn(tasks: set, coro) -> asyncio.Task:
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
