"""The loader thread raises before it sets the 'ready' event the server waits for."""

import threading

config: dict[str, str] = {}
ready = threading.Event()


def load_config() -> None:
    raw = "port=8080,debug"
    for pair in raw.split(","):
        key, value = pair.split("=")  # MARK: loader-crashes
        config[key] = value
    ready.set()


threading.Thread(target=load_config, name="config-loader").start()
ready.wait()  # MARK: main-waits
print("serving on", config["port"])
