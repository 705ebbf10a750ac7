"""A hand-made Future is completed by a producer thread, which crashes before it sets a result."""

import threading
from concurrent.futures import Future

report: Future[str] = Future()


def build_report() -> None:
    rows = [3, 1, 0]
    average = sum(rows) / rows.count(2)  # MARK: producer-crashes
    report.set_result(f"average {average}")


threading.Thread(target=build_report, name="report-builder").start()
print(report.result())  # MARK: main-waits
