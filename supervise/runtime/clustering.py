"""The daemon's side of cluster mode: the agent's events into the loop, the operator's cluster verbs out.

The agent (``supervise.cluster.agent``) runs in threads and posts core events
here through ``call_soon_threadsafe``; this module hands it what the core's
view says this node runs (coalesced: one report per loop turn at most), and
runs the blocking etcd calls of ``status --cluster``, ``cluster drain`` and
``scale`` of a cluster app on a thread of their own, answering when done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from supervise.cluster.agent import ROLL, Agent
from supervise.cluster.etcd import EtcdError
from supervise.cluster.records import InstanceReport
from supervise.config.model import Config
from supervise.core import Event, Reply
from supervise.core.actions import ScaleCluster
from supervise.core.views import View
from supervise.runtime.log import Log
from supervise.wire import protocol

LIVE = frozenset({"starting", "running", "stopping"})


class RolloutFailed(Exception):
    pass


class ClusterLink:
    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config, view: Callable[[], View],
                 dispatch: Callable[[Event], None], reply: Callable[[Reply], None], log: Log) -> None:
        assert config.cluster is not None
        self.loop = loop
        self._view = view
        self._reply = reply
        self._log = log
        self._apps = {name for name, app in config.apps.items() if app.clustered}
        self._pending = False
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="supervise-cluster-call")
        def post(event: Event) -> None:  # from the agent's threads
            loop.call_soon_threadsafe(dispatch, event)

        self.agent = Agent(config.cluster, config.apps, post, log)

    @property
    def node(self) -> str:
        return self.agent.node

    def summary(self) -> dict[str, object]:
        """``status --json``'s ``daemon.cluster``: which cluster, as which node, and whether etcd answers."""
        agent = self.agent
        return {"name": agent.config.name, "node": agent.node, "connected": agent.connected,
                "error": agent.last_error}

    def start(self) -> None:
        self.agent.start()

    def close(self, revoke: bool) -> None:
        self.agent.close(revoke)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def config_changed(self, config: Config) -> None:
        self._apps = {name for name, app in config.apps.items() if app.clustered}
        self.agent.set_apps(config.apps)
        self.changed()

    # -- what this node runs --------------------------------------------------------------

    def noticed(self, event: dict[str, object]) -> None:
        """A published event: a state change of a cluster instance means a new report."""
        if event.get("app") in self._apps and event.get("type") in ("state", "removed", "replaced"):
            self.changed()

    def changed(self) -> None:
        if not self._pending:
            self._pending = True
            self.loop.call_soon(self._report)

    def _report(self) -> None:
        self._pending = False
        self.agent.report({i.name: InstanceReport(i.state, i.pid, i.fence, i.state == "running", i.state in LIVE,
                                                  i.restarts) for i in self._view().cluster_instances()})

    # -- the operator's cluster verbs ----------------------------------------------------------

    def request(self, rid: int, req: protocol.Request) -> None:
        """``status --cluster`` and ``cluster drain|uncordon NODE``."""
        options = req.options or {}
        if req.cmd == "status":
            self._reply(Reply(rid, True, result=self.agent.status()))
            return
        action, node = options.get("action"), req.targets[0] if len(req.targets) == 1 else None
        if action not in ("drain", "uncordon") or node is None:
            self._reply(Reply(rid, False, error="usage: cluster drain|uncordon NODE", usage=True))
            return
        self._call(rid, lambda: self.agent.cordon(node, action == "drain"))

    def clustered(self, targets: tuple[str, ...]) -> bool:
        """`reload` of these targets is a cluster-wide rollout: every one is a cluster app."""
        return bool(targets) and all(t in self._apps for t in targets)

    def reload(self, rid: int, req: protocol.Request) -> None:
        """Roll cluster apps node by node across the cluster; reply once every node has (or one failed)."""
        timeout = req.timeout or 600.0

        def roll() -> dict[str, object]:
            rollouts = []
            for app in dict.fromkeys(req.targets):
                if req.dry_run:
                    rollouts.append({"app": app, "nodes": list(self.agent.rollout_order(app)), "dry_run": True})
                    continue
                generation, order = self.agent.request_rollout(app)
                outcome = self.agent.wait_rollout(app, generation, order, timeout)
                failed = [o for o in outcome if o["state"] == "failed"]
                if failed:
                    raise RolloutFailed(f"{app}: the rollout failed on {failed[0]['node']}: {failed[0]['error']}; "
                                        "the nodes after it were not rolled")
                rollouts.append({"app": app, "generation": generation, "nodes": outcome})
            return {"cluster": True, "rollouts": rollouts}
        self._call(rid, roll)

    @staticmethod
    def is_roll(reply: Reply) -> bool:
        rid = reply.request_id
        return isinstance(rid, tuple) and len(rid) == 3 and rid[0] == ROLL

    def rolled(self, reply: Reply) -> None:
        """This node's part of a cluster-wide rollout is over (the core's reply to it)."""
        rid = reply.request_id
        assert isinstance(rid, tuple)
        self.agent.rolled(str(rid[1]), int(rid[2]), reply.ok, reply.error)

    def scale(self, action: ScaleCluster) -> None:
        def record() -> dict[str, object]:
            self.agent.scale(action.app, action.count)
            return {"app": action.app, "instances": action.count, "cluster": True}
        self._call(action.request_id, record)

    def _call(self, rid: object, call: Callable[[], dict[str, object]]) -> None:
        future = self.loop.run_in_executor(self._executor, call)

        def done(f: asyncio.Future[dict[str, object]]) -> None:
            exc = f.exception()
            if exc is None:
                self._reply(Reply(rid, True, result=f.result()))
            elif isinstance(exc, ValueError):
                self._reply(Reply(rid, False, error=str(exc), usage=True))
            elif isinstance(exc, EtcdError):
                self._reply(Reply(rid, False, error=f"etcd: {exc}"))
            elif isinstance(exc, RolloutFailed | TimeoutError):
                self._reply(Reply(rid, False, error=str(exc)))
            else:
                self._log.error("cluster request failed", exc_info=exc)
                self._reply(Reply(rid, False, error=f"internal error: {exc!r}"))
        future.add_done_callback(done)
