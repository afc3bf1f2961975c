"""supervise: a process supervisor with millisecond failure detection.

The package layout is the architecture: ``config``, ``policy``, ``instance``
and ``core`` are pure; ``process``, ``daemon`` and ``logfiles`` touch the OS;
``protocol``, ``zmtp``, ``control`` and ``cli`` are the control channel.
"""

__version__ = "0.1.0"
