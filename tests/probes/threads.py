"""Python probe: the interpreter with threading.

At gate 1, three worker threads are blocked in queue.get(), one waits on a
threading.Event, one on a threading.Condition, and a dict, a list and a bytearray
hold deterministic data. After gate 1 main feeds the queue and sets the event and
the condition; after gate 2 it starts and joins more threads. Only main prints,
in a fixed order. Exit status 23 when all is well. Follows the gating protocol of
tests/probes/gate.h (reached-K is a directory).
"""

import hashlib
import os
import queue
import sys
import threading
import time

PROBE_EXIT_CODE = 23


def gate(k):
    print(f"gate {k}", flush=True)
    d = os.environ.get("CR_TEST_GATE")
    if not d:
        return
    reached = os.path.join(d, f"reached-{k}")
    go = os.path.join(d, f"go-{k}")

    def mark():
        try:
            os.mkdir(reached)
        except FileExistsError:
            pass

    mark()
    while not os.path.exists(go):
        if not os.path.exists(reached):
            mark()
        time.sleep(0.001)


def digest(b):
    return hashlib.sha256(b).hexdigest()[:16]


def main():
    failures = 0
    table = {f"key{i}": i * i for i in range(20000)}
    items = [i * 7 % 1009 for i in range(50000)]
    blob = bytearray((i * 31 + 7) % 256 for i in range(1 << 20))
    print(f"data: dict {len(table)} list {sum(items)} blob {digest(blob)}", flush=True)

    local = threading.local()
    local.name = "main"
    jobs = queue.Queue()
    results = queue.Queue()
    ready = threading.Barrier(3 + 2 + 1)

    def worker(i):
        local.name = f"worker{i}"
        ready.wait()
        while True:
            job = jobs.get()
            if job is None:
                return
            lo, hi = job
            results.put((lo, digest(bytes(blob[lo:hi])), local.name == f"worker{i}"))

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(3)]

    event = threading.Event()
    cond = threading.Condition()
    state = {"value": None, "event_seen": None, "cond_seen": None}

    def event_waiter():
        ready.wait()
        state["event_seen"] = event.wait()

    def cond_waiter():
        with cond:
            ready.wait()
            while state["value"] is None:
                cond.wait()
            state["cond_seen"] = state["value"] * 2

    others = [threading.Thread(target=event_waiter), threading.Thread(target=cond_waiter)]
    for t in workers + others:
        t.start()
    ready.wait()
    print("5 threads started", flush=True)

    gate(1)

    step = len(blob) // 12
    for j in range(12):
        jobs.put((j * step, (j + 1) * step))
    got = sorted(results.get() for _ in range(12))
    for lo, h, ok in got:
        print(f"chunk at {lo}: {h} thread-local ok {ok}")
    event.set()
    with cond:
        state["value"] = 21
        cond.notify_all()
    for t in others:
        t.join()
    print(f"event waiter saw {state['event_seen']}, condition waiter computed {state['cond_seen']}")

    gate(2)

    late = [None] * 4

    def late_worker(i):
        local.name = f"late{i}"
        late[i] = (sum(items[i::4]) * (i + 1), local.name == f"late{i}")

    ts = [threading.Thread(target=late_worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i, (v, ok) in enumerate(late):
        print(f"late thread {i}: {v} thread-local ok {ok}")
    for _ in workers:
        jobs.put(None)
    for t in workers:
        t.join()
    if local.name != "main":
        print("ERROR: main thread-local lost")
        failures += 1
    print(f"dict again {sum(table.values())} list again {sum(items)} blob again {digest(blob)}")
    print(f"threads alive at the end: {threading.active_count()}")

    gate(3)
    print("done", flush=True)
    sys.exit(PROBE_EXIT_CODE if failures == 0 else 1)


main()
