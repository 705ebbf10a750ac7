"""Healthy but idle for a while: a sleeping thread, a timed wait, a server in accept()."""

import socket
import threading
import time

stop = threading.Event()


def ticker() -> None:
    while not stop.wait(0.5):
        pass


def server(srv: socket.socket) -> None:
    conn, _ = srv.accept()
    conn.close()


if __name__ == "__main__":
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    threads = [
        threading.Thread(target=ticker, name="ticker"),
        threading.Thread(target=server, args=(srv,), name="server"),
        threading.Thread(target=time.sleep, args=(3.0,), name="sleeper"),
    ]
    for t in threads:
        t.start()
    time.sleep(3.0)
    socket.create_connection(srv.getsockname()).close()
    stop.set()
    for t in threads:
        t.join()
    print("done")
