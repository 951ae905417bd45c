"""The live and recently finished progressive jobs, by id, so a client that went away can
come back for its result; jobs are forgotten `keep_s` after they finish, or after `keep_s`
without a chunk while unfinished (abandoned uploads)."""

from __future__ import annotations

import asyncio
import time

from app.progressive.job import ProgressiveJob


class JobStore:
    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._jobs: dict[str, ProgressiveJob] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def unfinished(self) -> int:
        return sum(1 for job in self._jobs.values() if not job.finished)

    def add(self, job: ProgressiveJob) -> None:
        self._jobs[job.id] = job

    def get(self, job_id: str) -> ProgressiveJob | None:
        return self._jobs.get(job_id)

    async def remove(self, job_id: str) -> bool:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        await job.aclose()
        return True

    async def expire(self, now: float | None = None) -> int:
        """Forget the jobs past their time; how many went."""
        now = time.monotonic() if now is None else now
        old = [job.id for job in self._jobs.values()
               if (job.finished_at or job.touched_at) + self.keep_s < now]
        for job_id in old:
            await self.remove(job_id)
        return len(old)

    async def close(self) -> None:
        jobs, self._jobs = list(self._jobs.values()), {}
        await asyncio.gather(*(job.aclose() for job in jobs), return_exceptions=True)
