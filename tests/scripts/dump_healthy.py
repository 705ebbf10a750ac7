"""A healthy, idle program that stays up: healthy_idle.py's ticker in a timed wait and server in
accept(), a sleeper, and a main thread reading stdin. `conctools dump` must call none of it a
deadlock or a hang."""

import os
import socket
import sys
import threading
import time

from healthy_idle import server, ticker

if __name__ == "__main__":
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    for name, target, args in (("ticker", ticker, ()), ("server", server, (srv,)), ("sleeper", time.sleep, (600.0,))):
        threading.Thread(target=target, args=args, name=name, daemon=True).start()
    print("started", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    print("bye", flush=True)
    os._exit(0)
