"""Which config the daemon runs: a re-read of its file (reload, SIGHUP), or the one a dead daemon's
checkpoint recorded (adoption), before either reaches the core.

A config with errors changes nothing; new listen addresses are bound first,
so an address in use is an error too before anything has changed.
"""

from __future__ import annotations

from supervise.config import loader
from supervise.config.errors import ConfigError, Problem
from supervise.config.model import Config
from supervise.runtime.checkpoint import Checkpoint
from supervise.runtime.listeners import Listeners
from supervise.runtime.log import Log


def reread(current: Config, listeners: Listeners, bind: bool, log: Log) -> Config:
    """The config file as it is now; ConfigError or ListenError (nothing changed) when it cannot be run."""
    new = loader.load(current.path)
    if new.supervise.state_dir != current.supervise.state_dir:
        why = "changed; that takes a daemon restart (`supervise shutdown`, then `supervise run`)"
        raise ConfigError([Problem(new.path, None, "supervise.state_dir", why)])
    if bind:
        for app in new.apps.values():
            for address in app.listen:
                for note in listeners.bind(address, app.listen_option(address)):
                    log.warning("a listen option is not applied", note=note)
    return new


def control_changed(was: Config, now: Config) -> bool:
    """The [supervise] control settings differ: they apply only at the next daemon start."""
    a, b = was.supervise, now.supervise
    return (a.control, a.control_key, a.control_clients) != (b.control, b.control_key, b.control_clients)


def recorded_config(found: Checkpoint | None, current: Config, log: Log) -> Config | None:
    """The config the checkpoint's instances were started under, when it is not the file's (and loads):
    adopted under it, they match what runs; the file's is applied after, as a reload would."""
    if found is None or not found.config_text or found.config_text == current.text:
        return None
    try:
        return loader.loads(found.config_text, found.config_path)
    except ConfigError as exc:
        log.warning("the checkpoint's config no longer loads; adopting under the current one", error=str(exc))
        return None
