"""The config as data, pure: ``model`` (frozen dataclasses of final types), ``loader`` (TOML ->
model, every problem located by file, line and key), ``units`` and ``lines`` (its helpers),
``locate`` (the state dir a config names, found without the loader, for the CLI).

Nothing is imported here: the CLI imports ``locate`` alone and must not pay for the loader.
"""
