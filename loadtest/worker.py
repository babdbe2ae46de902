"""A load worker process: many clientlib clients on one event loop, open-loop Poisson sends.

Latency is measured from each message's *intended* send time, so a stall in
the system under test shows up in the percentiles instead of silently slowing
the senders (coordinated omission). Every half second the worker sends a
progress record (with an HdrHistogram of that interval) to the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any

import uvloop
from hdrh.histogram import HdrHistogram

from clientlib import Client, ClientError
from clientlib.kernel.backoff import BackoffPolicy
from loadtest.model import ClientSpec, Hotspot, next_send

HIST_MAX_US = 120_000_000


def new_hist() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


@dataclass
class WorkerJob:
    worker: int
    url: str | list[str]  # several: a cluster's gateways (the client fails over)
    specs: list[ClientSpec]
    t0: float  # time.time() of the run's start
    duration: float
    hotspot: Hotspot | None
    message_bytes: int
    drain_s: float
    seed: int
    token: str | None = None


class ClientRun:
    __slots__ = ("client", "disc_at", "errors", "next_n", "replies", "resumes_ms", "spec")

    def __init__(self, spec: ClientSpec, client: Client):
        self.spec = spec
        self.client = client
        self.next_n = 0
        self.replies: list[tuple[int, int]] = []
        self.resumes_ms: list[float] = []
        self.disc_at: float | None = None
        self.errors = ""


class Worker:
    def __init__(self, job: WorkerJob, out: Queue[Any]):
        self.job = job
        self.out = out
        self.hist = new_hist()  # this interval
        self.runs: list[ClientRun] = []
        self.connected = 0
        self.sent = 0
        self.received = 0
        self.failed = 0

    def now(self) -> float:
        """Seconds since the run's t0 (wall clock shared by all processes)."""
        return time.time() - self.job.t0

    async def main(self) -> None:
        job = self.job
        rng = random.Random(job.seed)
        pad = "x" * job.message_bytes
        tasks = [
            asyncio.create_task(self.client_task(s, random.Random(rng.random()), pad))
            for s in job.specs
        ]
        reporter = asyncio.create_task(self.report_loop())
        await asyncio.gather(*tasks, return_exceptions=True)
        reporter.cancel()
        self.report(final=True)

    async def client_task(self, spec: ClientSpec, rng: random.Random, pad: str) -> None:
        job = self.job
        await asyncio.sleep(max(0.0, spec.start - self.now()))
        client = Client(
            job.url,
            spec.key,
            token=job.token,
            start_timeout=60,
            backoff=BackoffPolicy(base=0.1, cap=5.0),
            ping_interval=None,
        )
        run = ClientRun(spec, client)
        self.runs.append(run)
        try:
            await client.start()
        except ClientError as exc:
            run.errors = repr(exc)
            self.failed += 1
            return
        self.connected += 1
        reader = asyncio.create_task(self.reader(run))
        watcher = asyncio.create_task(self.watch(run))
        try:
            t = max(self.now(), spec.start)
            while True:
                t = next_send(t, spec, job.hotspot, rng)
                if t >= job.duration:
                    if t == math.inf:  # silent from here on: stay connected to the end
                        await asyncio.sleep(max(0.0, job.duration - self.now()))
                    break
                delay = t - self.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                run.next_n += 1
                self.sent += 1
                await client.send({"n": run.next_n, "t": t, "p": pad})
            # Wait for the replies still in flight, then leave.
            deadline = time.monotonic() + job.drain_s
            while len(run.replies) < run.next_n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        except ClientError as exc:
            run.errors = repr(exc)
        finally:
            reader.cancel()
            watcher.cancel()
            self.connected -= 1
            with contextlib.suppress(Exception):
                await client.close()

    async def reader(self, run: ClientRun) -> None:
        with contextlib.suppress(ClientError):
            async for msg in run.client:
                now = self.now()
                run.replies.append((int(msg["n"]), int(msg["count"])))
                self.received += 1
                us = int((now - float(msg["t"])) * 1e6)
                self.hist.record_value(min(max(us, 1), HIST_MAX_US))

    async def watch(self, run: ClientRun) -> None:
        """Time from losing a connection to the next welcome (reconnect to resume)."""
        while True:
            ev = await run.client.events.get()
            if ev.kind == "disconnected":
                run.disc_at = ev.at
            elif ev.kind == "connected" and run.disc_at is not None:
                run.resumes_ms.append((ev.at - run.disc_at) * 1000)
                run.disc_at = None

    async def report_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.report()

    def report(self, final: bool = False) -> None:
        hist, self.hist = self.hist, new_hist()
        rec: dict[str, Any] = {
            "worker": self.job.worker,
            "t": self.now(),
            "connected": self.connected,
            "sent": self.sent,
            "received": self.received,
            "failed": self.failed,
            "reconnects": sum(r.client.stats.reconnects for r in self.runs),
            "hist": hist.encode() if hist.get_total_count() else None,
        }
        if final:
            rec["final"] = True
            rec["clients"] = [
                {
                    "key": r.spec.key,
                    "hot": r.spec.hot,
                    "sent": r.next_n,
                    "replies": r.replies,
                    "resumes_ms": r.resumes_ms,
                    "error": r.errors,
                    "not_resumed": r.client.stats.not_resumed,
                }
                for r in self.runs
            ]
        self.out.put(rec)


def worker_main(job: WorkerJob, out: Queue[Any]) -> None:
    """Entry point of a spawned worker process."""
    uvloop.run(Worker(job, out).main())
