"""A connection pool (Semaphore(2)) leaks a permit on an error path: two requests exit without
releasing, and the next four requests wait forever."""

import threading

connections = threading.Semaphore(2)


def handle(request_id: int) -> None:
    connections.acquire()  # MARK: request-acquires
    if request_id in (0, 2):
        return  # early return on a validation error: the permit is never released
    try:
        print("handled", request_id)
    finally:
        connections.release()


for request_id in (0, 2):
    t = threading.Thread(target=handle, args=(request_id,), name=f"request-{request_id}")
    t.start()
    t.join()
waiting = [threading.Thread(target=handle, args=(i,), name=f"request-{i}") for i in (1, 3, 4, 5)]
for t in waiting:
    t.start()
for t in waiting:
    t.join()
