"""Python probe: a multiprocessing Pool (fork start method) checkpointed mid-computation.

Two worker processes share the parent's semaphores (POSIX semaphores: sem_open'ed,
unlinked /dev/shm files mapped MAP_SHARED in every process), its task and result pipes
and an Event. A first map() runs to the end. Then a map_async() of 12 tasks starts while
the Event is clear: at gate 1 each worker is blocked in Event.wait() inside a task, one
holds the task pipe's read lock, and the remaining tasks sit in the task pipe. After
gate 1 the parent sets the Event (a futex in shared memory), the workers finish, the
results come back through the result pipe; after gate 2 the pool is closed and joined.
Only the parent prints. Exit status 23 when all is well. Gating protocol: gate.h.
"""

import hashlib
import multiprocessing as mp
import os
import sys
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


EVENT = None
STARTED = None


def init(ev, started):
    global EVENT, STARTED
    EVENT, STARTED = ev, started


def square(x):
    return x * x


def digest(x):
    STARTED.release()
    EVENT.wait()
    h = hashlib.sha256(str(x).encode())
    for _ in range(2000):
        h = hashlib.sha256(h.digest())
    return (x, h.hexdigest()[:16], os.getppid() == PARENT)


PARENT = os.getpid()


def main():
    ctx = mp.get_context("fork")
    ev = ctx.Event()
    started = ctx.Semaphore(0)
    failures = 0
    with ctx.Pool(2, initializer=init, initargs=(ev, started)) as pool:
        squares = pool.map(square, range(200), chunksize=10)
        print(f"squares: {len(squares)} sum {sum(squares)}", flush=True)
        pending = pool.map_async(digest, range(12), chunksize=1)
        # Both workers are inside a task (blocked in Event.wait) before the gate.
        started.acquire()
        started.acquire()
        gate(1)
        ev.set()
        results = pending.get(timeout=60)
        for x, h, parent_ok in results:
            print(f"task {x}: {h}", flush=True)
            if not parent_ok:
                print(f"ERROR: task {x} ran in a worker whose parent is not the pool's process")
                failures += 1
        gate(2)
        pool.close()
        pool.join()
    print("pool joined", flush=True)
    gate(3)
    return PROBE_EXIT_CODE if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
