"""The daemon and the OS side, around the pure core.

``daemon`` is the event loop: it feeds every event to the core and hands each
action to the room that carries it out: ``workers`` (spawn, adopt, signal,
reap), ``heartbeats`` and ``control_server`` (the sockets), ``chores``
(sampling, checkpoints, the service manager), ``chaos_sessions``,
``watching``. Below them: ``process``, ``cgroups``, ``sampler``,
``listeners``, ``checkpoint``, ``adoption``, ``logfiles``, ``sdnotify``,
``watch``, ``log``.
"""
