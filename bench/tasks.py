"""The raw Celery task of the benchmark's floor: no database, one Redis write.

The bench worker imports it with ``-I bench.tasks``; it runs under the project's Celery settings
(``acks_late``, prefetch, serializer), so it differs from ``orchestration.run_step`` only by the
engine's work.
"""

from __future__ import annotations

import time

from celery import shared_task

from bench.workflows import bench_redis


@shared_task(name="bench.raw_noop", ignore_result=True)
def raw_noop(run: str, index: int, mode: str) -> None:
    now = time.time()
    if mode == "roundtrip":
        bench_redis().rpush(f"bench:{run}:raw", f"{index}|{now!r}")
    else:
        pipe = bench_redis().pipeline(transaction=False)
        pipe.incr(f"bench:{run}:raw_count")
        pipe.set(f"bench:{run}:raw_last", repr(now))
        pipe.execute()
