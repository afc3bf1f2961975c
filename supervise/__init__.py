"""supervise: a process supervisor with millisecond failure detection.

The package layout is the architecture (docs/architecture.md): ``config``
and ``core`` are pure (the core takes events and returns actions, with no
clock, process or socket of its own); ``wire`` is what crosses a socket;
``runtime`` is the daemon and everything it does to the OS; ``control`` and
``cli`` are the operator's side; ``worker`` is the library workers import.
"""

__version__ = "0.1.0"
