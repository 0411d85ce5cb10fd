"""Producer and consumer: a generator coroutine driven by ``send``, and the pool version.

Seed note 002: ``consumer()`` is a generator that receives each item through
``n = yield r`` and answers "200 ok"; ``producer(c)`` primes it with
``c.send(None)`` and then ``c.send(n)`` for 1, 2, 3.  The producer never
gets ahead of the consumer: each ``send`` waits for the consumer's answer.

``send`` is plain control flow inside one thread, so the seed's code runs
unchanged (it is shown first).  What anypool adds is the same hand-over
*across workers*: ``pool.imap(consume, producer())`` pulls items from the
producer generator only as workers have room (with ``buffersize=`` bounding
how many items are out at once), so the producer stays a bounded number of
items ahead even when it never ends, while the consumers run in parallel.
The answers come back in order, as ``send``'s return values do.

Run: ``python examples/producer_consumer.py``
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Generator, Iterator

import anypool

# -- the seed's version: one thread, send() --------------------------------------------

def consumer() -> Generator[str, int | None, None]:
    print("[CONSUMER] start")
    r = "start"
    while True:
        n = yield r
        if not n:
            print("n is empty")
            continue
        print(f"[CONSUMER] Consumer is consuming {n}")
        r = "200 ok"


def producer(c: Generator[str, int | None, None]) -> None:
    print(c.send(None))  # start the generator
    n = 0
    while n < 3:
        n += 1
        print(f"[PRODUCER] Producer is producing {n}")
        r = c.send(n)
        print(f"[PRODUCER] Consumer return: {r}")
    c.close()


# -- the pool version: consumers on worker threads, pulled lazily ------------------------

class Counter:
    """How many items the producer has made and the caller has taken back."""

    def __init__(self) -> None:
        self.produced = 0
        self.consumed = 0
        self.max_ahead = 0
        self.lock = threading.Lock()


def endless_producer(counter: Counter) -> Iterator[int]:
    for n in itertools.count(1):
        with counter.lock:
            counter.produced += 1
            counter.max_ahead = max(counter.max_ahead, counter.produced - counter.consumed)
        yield n


def consume(n: int) -> str:
    time.sleep(0.005)  # some IO per item
    return f"200 ok ({n})"


def main() -> None:
    print("-- the seed's send() version --")
    producer(consumer())

    print("-- anypool: 4 consumers on threads, pulling from an endless producer --")
    counter = Counter()
    t0 = time.perf_counter()
    with anypool.Pool("thread", workers=4) as pool:
        answers = pool.imap(consume, endless_producer(counter), buffersize=8)
        for answer in answers:
            counter.consumed += 1
            if counter.consumed <= 3 or counter.consumed % 100 == 0:
                print(f"[PRODUCER] Consumer return: {answer}")
            if counter.consumed == 300:
                answers.close()  # stop the run: what is still in flight is cancelled
                break
    took = time.perf_counter() - t0
    print(f"300 answers in {took:.2f} s (one at a time: {300 * 0.005:.2f} s); "
          f"the producer made {counter.produced} items and was never more than "
          f"{counter.max_ahead} ahead of the consumer")


if __name__ == "__main__":
    main()
