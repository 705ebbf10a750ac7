"""Three workers meet at a barrier each round, but one crashes while loading its shard."""

import threading

start_line = threading.Barrier(3)
shards = {"shard-0": [1, 2], "shard-1": [3]}


def worker(name: str) -> None:
    rows = shards[name]  # MARK: worker-crashes
    start_line.wait()  # MARK: worker-waits
    print(name, sum(rows))


threads = [threading.Thread(target=worker, args=(f"shard-{i}",), name=f"loader-{i}") for i in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
