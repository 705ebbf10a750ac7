"""A generator takes the database lock around its rows; the caller reads only the first row and
keeps the generator around, so the lock stays held; the next query waits for it forever."""

import threading

db_lock = threading.Lock()
table = [("ada", 36), ("alan", 41)]


def rows():
    with db_lock:  # MARK: generator-acquires
        yield from table  # MARK: generator-suspended


def first_user(cursor) -> str:
    return next(cursor)[0]


def count_users() -> int:
    with db_lock:  # MARK: main-blocks
        return len(table)


cursor = rows()
print(first_user(cursor))
print(count_users())
