"""What crosses a socket, shared by the daemon, the CLI and the workers: ``protocol`` (the
wire formats and the workers' environment names), ``zmtp`` (the CLI's dependency-free ZMTP
client), ``curve`` (CURVE keys for the TCP control endpoint), ``statedir`` (where the sockets
and the daemon's lock are).

Nothing is imported here: the CLI and the workers take only what they use.
"""
