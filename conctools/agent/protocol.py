"""What a client may ask the dump agent, and the shape of the answers.

One question per connection: the client sends one line of JSON, ``{"ask": "dump"}``, and reads
one JSON document until the agent closes the connection. The questions are names from a fixed
list (:data:`QUESTIONS`); nothing a client sends is ever run, evaluated or used as a path.

=========  ========================================================  ===================
question   answer                                                    schema
=========  ========================================================  ===================
``hello``  who the process is: pid, command line, start time         ``conctools.hello/1``
``dump``   every thread, task, lock, wait and cycle, what was found   ``conctools.dump/1``
           so far, resources (``docs/dump-schema.md``)
``top``    counts by state, the hottest waits, stalls, lag, CPU       ``conctools.top/1``
=========  ========================================================  ===================

A refused or failed question is answered ``{"error": "one line"}``.
"""

from __future__ import annotations

from conctools._typing import Any

__all__ = [
    "DUMP_SCHEMA",
    "HELLO_SCHEMA",
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "QUESTIONS",
    "TOP_SCHEMA",
    "encode",
    "parse_request",
]

HELLO_SCHEMA = "conctools.hello/1"
DUMP_SCHEMA = "conctools.dump/1"
TOP_SCHEMA = "conctools.top/1"
QUESTIONS = frozenset({"hello", "dump", "top"})
MAX_REQUEST_BYTES = 4096
MAX_REPLY_BYTES = 512 * 1024 * 1024  # a dump of 100,000 tasks stays far below


def parse_request(line: bytes) -> str:
    """The question a request line asks; ``ValueError`` with a short reason for anything else."""
    import json  # here: the agent starts with the run, and is asked only now and then

    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the request is not a JSON line") from None
    if not isinstance(request, dict) or not isinstance(request.get("ask"), str):
        raise ValueError('the request must be {"ask": QUESTION}')
    question: str = request["ask"]
    if question not in QUESTIONS:
        raise ValueError(f"unknown question (known: {', '.join(sorted(QUESTIONS))})")
    return question


def encode(document: Any) -> bytes:
    """A reply on the wire: compact JSON, ASCII only (so that no name can break the framing), with
    NaN and infinity as ``null`` as in every conctools JSON (cleaned only when there is one)."""
    import json

    try:
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=True, default=str, allow_nan=False)
    except ValueError:
        from conctools.reporting.jsonreport import _clean

        text = json.dumps(_clean(document), separators=(",", ":"), ensure_ascii=True, default=str)
    return text.encode("ascii")
