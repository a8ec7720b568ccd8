"""Records a vfio-user exchange: a proxy between a peer client and a server that logs every message.

``python -m tests.vfio_recorder LISTEN_PATH SERVER_PATH OUT.json`` listens at LISTEN_PATH, relays
one client connection to the server at SERVER_PATH (fds included) and writes the messages of both
directions to OUT.json, which ``tests/test_vfio_conformance.py`` replays against the server.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading

from hermes.vfio import protocol as P


def _relay(src: socket.socket, dst: socket.socket, direction: str, log: list,
           lock: threading.Lock) -> None:
    rx = P.Receiver(src, stall_timeout=60.0)
    try:
        while True:
            msg = rx.recv()
            if msg is None:
                break
            with lock:
                log.append({"dir": direction, "msg_id": msg.msg_id, "cmd": msg.cmd,
                            "flags": msg.flags, "error_no": msg.error_no,
                            "payload": msg.payload.hex(), "fds": len(msg.fds)})
            P.send_message(dst, msg)
            msg.close_fds()
    except (OSError, P.ProtocolError) as exc:
        with lock:
            log.append({"dir": direction, "end": str(exc)})
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def record(listen_path: str, server_path: str, out_path: str) -> None:
    """Relay one connection from ``listen_path`` to ``server_path``; write the log as JSON."""
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(listen_path)
    lsock.listen(1)
    client, _ = lsock.accept()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.connect(server_path)
    log: list = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_relay, args=(client, server, "c2s", log, lock)),
               threading.Thread(target=_relay, args=(server, client, "s2c", log, lock))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    lsock.close()
    os.unlink(listen_path)
    with open(out_path, "w") as f:
        json.dump(log, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    record(*sys.argv[1:4])
