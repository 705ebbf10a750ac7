"""A healthy, idle program: a ticker in a timed wait, a server in accept(), a sleeper, and a main
thread reading stdin. `conctools dump` must call none of it a deadlock or a hang."""

import os
import socket
import sys
import threading
import time

stop = threading.Event()


def ticker() -> None:
    while not stop.wait(0.5):  # timed wait: ticker
        pass


def server(srv: socket.socket) -> None:
    conn, _ = srv.accept()
    conn.close()


if __name__ == "__main__":
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    threads = [
        threading.Thread(target=ticker, name="ticker", daemon=True),
        threading.Thread(target=server, args=(srv,), name="server", daemon=True),
        threading.Thread(target=time.sleep, args=(600.0,), name="sleeper", daemon=True),
    ]
    for t in threads:
        t.start()
    print("started", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    print("bye", flush=True)
    os._exit(0)
