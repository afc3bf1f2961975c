"""The running `supervise chaos` sessions (the plan of each is in chaos.py)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping

from supervise.config.model import Config
from supervise.core import Reply
from supervise.runtime.chaos import SIGNALS, ChaosError, ChaosPlan
from supervise.runtime.workers import Worker, WorkerTable, signal_worker


class ChaosSessions:
    """The running `supervise chaos` sessions: each a task harming instances until its duration ends.

    A request is checked here (apps known, marked ``chaos = true`` or forced)
    and answered at once; the harms follow in the background, each published
    as an event. The core ends them all (``EndChaos``) when the drain begins.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: WorkerTable,
                 publish: Callable[[dict[str, object]], int], reply: Callable[[Reply], None]) -> None:
        self.loop = loop
        self.workers = workers
        self.publish = publish  # returns the event's sequence number
        self.reply = reply
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._started = 0

    def start(self, rid: int, targets: tuple[str, ...], options: Mapping[str, object], config: Config,
              shutting_down: bool) -> None:
        """Validate a chaos request, answer at once, and harm instances in the background."""
        def refuse(message: str, usage: bool = True) -> None:
            self.reply(Reply(rid, False, error=f"chaos: {message}", usage=usage))

        if shutting_down:
            return refuse("the daemon is shutting down", usage=False)
        if not targets:
            return refuse("name the apps or instances to harm")
        apps = {t.partition(":")[0] for t in targets}
        unknown = sorted(a for a in apps if a not in config.apps)
        if unknown:
            return refuse(f"no app named {unknown[0]!r} (apps: {', '.join(config.apps) or 'none'})")
        guarded = sorted(a for a in apps if not config.apps[a].chaos)
        if guarded and options.get("force") is not True:
            return refuse(f"{', '.join(guarded)} not marked `chaos = true` in {config.path.name}; "
                          "mark it, or pass --force if you really mean to harm it")
        try:
            plan = ChaosPlan.from_options(options)
        except ChaosError as exc:
            return refuse(str(exc))
        self._started += 1
        cid = self._started
        seq = self.publish({"type": "chaos", "id": cid, "event": "started", "targets": list(targets),
                            "rate": plan.rate, "duration": plan.duration, "signal": plan.signal, "seed": plan.seed})
        self.reply(Reply(rid, True, result={
            "id": cid, "seq": seq - 1, "rate": plan.rate, "duration": plan.duration, "signal": plan.signal,
            "seed": plan.seed, "targets": list(targets)}))
        self._tasks[cid] = self.loop.create_task(self._run(cid, plan, frozenset(targets)))

    def end_all(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()

    async def _run(self, cid: int, plan: ChaosPlan, targets: frozenset[str]) -> None:
        loop = self.loop
        end = loop.time() + plan.duration
        stopped: dict[int, Worker] = {}
        harms = 0
        try:
            while True:
                at = loop.time() + plan.next_delay()
                if at > end:
                    await asyncio.sleep(max(0.0, end - loop.time()))
                    break
                await asyncio.sleep(max(0.0, at - loop.time()))
                live = {w.name: w for w in self.workers if w.name in targets or w.app.name in targets}
                name = plan.pick(list(live))
                if name is None:
                    continue  # nothing alive to harm right now
                worker = live[name]
                sig = SIGNALS[plan.signal]
                signal_worker(worker, sig)
                harms += 1
                if sig == signal.SIGSTOP:
                    stopped[worker.spawn_id] = worker
                self.publish({"type": "chaos", "id": cid, "event": "harm", "name": worker.name,
                              "pid": worker.child.pid, "signal": f"SIG{plan.signal}"})
        finally:
            for spawn_id, worker in stopped.items():  # a hang ends with the chaos (unless it was detected)
                if self.workers.get(spawn_id) is worker:
                    signal_worker(worker, signal.SIGCONT)
            self._tasks.pop(cid, None)
            self.publish({"type": "chaos", "id": cid, "event": "done", "harms": harms})
