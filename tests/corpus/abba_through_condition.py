"""The producer notifies under the queue's condition and then takes the stats lock; the reporter
takes the stats lock and then the condition's lock: a lock-order inversion through a Condition."""

import threading

state_lock = threading.Lock()
items_ready = threading.Condition(state_lock)
stats_lock = threading.Lock()
both_inside = threading.Barrier(2)
items: list[int] = []
stats = {"produced": 0}


def produce() -> None:
    with items_ready:  # MARK: producer-acquires
        items.append(1)
        items_ready.notify()
        both_inside.wait()
        with stats_lock:  # MARK: producer-blocks
            stats["produced"] += 1


def report() -> None:
    with stats_lock:  # MARK: reporter-acquires
        both_inside.wait()
        with state_lock:  # MARK: reporter-blocks
            print(stats, len(items))


threads = [threading.Thread(target=produce, name="producer"), threading.Thread(target=report, name="reporter")]
for t in threads:
    t.start()
for t in threads:
    t.join()
