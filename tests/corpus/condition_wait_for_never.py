"""The collector waits for three results, but one fetcher returns early without adding its own:
wait_for's predicate can never become true (and nobody is left to notify)."""

import threading

results: list[str] = []
results_ready = threading.Condition()


def fetch(source: str) -> None:
    if source == "mirror":
        return  # nothing to add: the collector is never told
    with results_ready:
        results.append(source)
        results_ready.notify_all()


def collect() -> list[str]:
    with results_ready:
        results_ready.wait_for(lambda: len(results) == 3)  # MARK: collector-waits
        return list(results)


for source in ("primary", "mirror", "backup"):
    threading.Thread(target=fetch, args=(source,), name=f"fetch-{source}").start()
print(collect())
