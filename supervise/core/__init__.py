"""The supervisor core, pure and sans-IO: events in, actions out.

``Core.handle(event, now)`` takes one of the events of ``events`` and
returns the actions of ``actions``; ``Core.next_deadline()`` says when to
call again with ``DeadlineReached``; ``Core.view`` is all the shell may
read. Inside: ``instance`` (one instance's state machine), ``policy``
(backoff, crash-loop breaker), ``group`` (one app: convergence and
replacements), ``fleet`` (every app, depends_on), ``commands`` (operators'
commands and their replies), ``views`` (status, snapshot), ``rollout``
(rollout state and config diffs), ``registry`` (the books every app shares).
"""

from supervise.core.actions import (
    Action,
    Adopt,
    Checkpoint,
    EndChaos,
    Exit,
    KillTree,
    Notify,
    PromoteSpare,
    Publish,
    ReleaseListeners,
    Reply,
    Resample,
    SendDrain,
    ServiceState,
    Signal,
    SignalTree,
    Spawn,
    StopStray,
)
from supervise.core.events import (
    Adopted,
    AppRecord,
    Beat,
    Cause,
    CommandReceived,
    DaemonStarted,
    DeadlineReached,
    Drained,
    Event,
    Exited,
    FilesChanged,
    Healthy,
    Ready,
    Recovered,
    Role,
    Sampled,
    ShutdownRequested,
    Spawned,
    SpawnFailed,
    Unhealthy,
    Verb,
)
from supervise.core.supervisor import Core
from supervise.core.views import View

__all__ = [
    "Action", "Adopt", "Adopted", "AppRecord", "Beat", "Cause", "Checkpoint", "CommandReceived", "Core",
    "DaemonStarted", "DeadlineReached", "Drained", "EndChaos", "Event", "Exit", "Exited", "FilesChanged", "Healthy",
    "KillTree", "Notify", "PromoteSpare", "Publish", "Ready", "Recovered", "ReleaseListeners", "Reply", "Resample",
    "Role", "Sampled",
    "SendDrain", "ServiceState", "ShutdownRequested", "Signal", "SignalTree", "Spawn", "SpawnFailed", "Spawned",
    "StopStray", "Unhealthy", "Verb", "View",
]
