"""Serves on the sockets it was handed (systemd protocol): each connection gets one
JSON line {pid, listen_pid, names, fds} and is closed."""
import json
import os
import signal
import socket
import threading

from supervise.worker import Heartbeat

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
hb = Heartbeat.from_env()
socks = hb.listen_sockets()
info = {"pid": os.getpid(), "listen_pid": os.environ.get("LISTEN_PID"),
        "names": os.environ.get("LISTEN_FDNAMES"), "fds": [s.fileno() for s in socks]}
print(json.dumps(info), flush=True)


def serve(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        conn.sendall((json.dumps(info) + "\n").encode())
        conn.close()


for sock in socks[1:]:
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
hb.ready()
hb.start()
serve(socks[0])
