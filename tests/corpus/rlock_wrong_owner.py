"""A job lock meant to be handed off between threads is an RLock: the finisher thread cannot
release what the starter thread owns, dies, and never signals that the job is done."""

import threading

job_lock = threading.RLock()
job_done = threading.Event()


def start_job() -> None:
    job_lock.acquire()  # MARK: starter-acquires
    job_done.wait()  # MARK: starter-waits
    print("job finished")


def finish_job() -> None:
    job_lock.release()  # MARK: finisher-crashes
    job_done.set()


def next_job() -> None:
    with job_lock:  # MARK: next-blocks
        print("next job")


starter = threading.Thread(target=start_job, name="starter")
starter.start()
finisher = threading.Thread(target=finish_job, name="finisher")
finisher.start()
finisher.join()
nxt = threading.Thread(target=next_job, name="next-job")
nxt.start()
nxt.join()
starter.join()
