"""Large buffers reach process tasks through shared memory: correct, read-only, never leaked."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable

import psutil
import pytest

import anypool
import sharedmem_tasks as st
from anypool import sharedmem
from anypool.serialize import dumps_args, loads_args
from helpers import SERVICES

pytestmark = pytest.mark.skipif(not sharedmem.ENABLED, reason="shared memory needs Linux (memfd, /proc)")

BIG = sharedmem.SHARE_FROM * 3


def big_buffer(seed: int = 1, size: int = BIG) -> bytearray:
    return bytearray((i * seed) % 251 for i in range(256)) * (size // 256)


def memfds(pid: int | None = None) -> set[int]:
    """The anypool shared-memory files a process holds open (by inode: a mapping dups its fd)."""
    base = f"/proc/{pid or os.getpid()}/fd"
    out = set()
    for name in os.listdir(base):
        try:
            if "memfd:anypool" in os.readlink(f"{base}/{name}"):
                out.add(os.stat(f"{base}/{name}").st_ino)
        except OSError:
            continue
    return out


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _shm() -> set[str]:
    """Named shared memory in /dev/shm, less multiprocessing's named semaphores
    (``sem.*``: other programs' pools create and remove those at any time;
    anypool makes no named objects at all)."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


@pytest.fixture
def shm_listing() -> set[str]:
    return _shm()


class TestSerialization:
    def test_small_buffers_stay_inside_the_pickle(self) -> None:
        wire, holder = dumps_args(pickle.PickleBuffer(bytearray(1000)))
        assert holder is None
        assert isinstance(wire, bytes)
        assert loads_args(wire) == bytearray(1000)

    def test_large_buffers_travel_out_of_band_in_one_file(self) -> None:
        bufs = [pickle.PickleBuffer(big_buffer(1)), pickle.PickleBuffer(big_buffer(2))]
        wire, holder = dumps_args(bufs)
        assert holder is not None
        data, descs = wire
        assert len(data) < 10_000  # the bytes are not in the pickle
        assert len({fd for _, fd, _, _ in descs}) == 1  # one file for the whole payload
        got = loads_args(wire)
        assert [bytes(g) for g in got] == [bytes(big_buffer(1)), bytes(big_buffer(2))]
        del got
        holder.close()
        assert memfds() == set()

    def test_shared_memory_travels_by_reference_without_a_copy(self) -> None:
        shared = anypool.share(big_buffer(3))
        assert isinstance(shared, memoryview)
        assert not shared.readonly
        wire, holder = dumps_args(pickle.PickleBuffer(shared[BIG // 3:]))
        assert holder is not None
        assert holder.fd == -1  # no new file: nothing was copied
        assert bytes(loads_args(wire)) == bytes(big_buffer(3)[BIG // 3:])

    def test_a_shared_memoryview_itself_travels_by_reference(self) -> None:
        """Regression: share() of a buffer gives a memoryview, which cloudpickle copied into
        bytes in-band (3 MB a task): it now goes out of band, with its format and shape."""
        import array

        shared = anypool.share(array.array("d", range(BIG // 8)))
        wire, holder = dumps_args(((shared,), {}))
        assert holder is not None
        assert holder.fd == -1  # no copy: the shared file itself
        assert len(wire[0]) < 1000
        (back,), _ = loads_args(wire)
        assert (back.format, back.shape, back.readonly) == ("d", (BIG // 8,), True)
        assert back[-1] == BIG // 8 - 1
        # a small, unshared memoryview still arrives as one, in-band
        wire, holder = dumps_args(memoryview(b"abc"))
        assert holder is None
        assert bytes(loads_args(wire)) == b"abc"

    def test_share_frees_its_memory_when_the_object_is_gone(self) -> None:
        shared = anypool.share(big_buffer(4))
        assert len(memfds()) == 1
        del shared
        assert eventually(lambda: memfds() == set())

    def test_share_rejects_what_it_cannot_share(self) -> None:
        with pytest.raises(TypeError):
            anypool.share(123)
        with pytest.raises(ValueError, match="non-empty"):
            anypool.share(b"")
        with pytest.raises(ValueError, match="contiguous"):
            anypool.share(memoryview(bytearray(100))[::2])


class TestInWorkers:
    def test_a_shared_buffer_reaches_a_task_as_it_is(self) -> None:
        shared = anypool.share(big_buffer(7))
        with anypool.Pool("process", 1) as pool:
            assert pool.submit(st.describe, shared).result(30) == (
                "memoryview", True, len(shared), zlib.crc32(shared))

    def test_large_buffer_arrives_intact_and_read_only(self, shm_listing: set[str]) -> None:
        buf = big_buffer(5)
        with anypool.Pool("process", 1) as pool:
            kind, readonly, size, crc = pool.submit(st.describe, pickle.PickleBuffer(buf)).result(30)
            assert (kind, readonly, size, crc) == ("memoryview", True, len(buf), zlib.crc32(buf))
            assert pool.submit(st.try_write, pickle.PickleBuffer(buf)).result(30) == "TypeError"
            # the worker dropped its mapping with the arguments, the pool its file with the task
            assert pool.submit(st.mapped_segments).result(30) == 0
            assert eventually(lambda: memfds() == set())
        assert _shm() == shm_listing

    def test_map_sends_many_large_buffers_in_order(self) -> None:
        bufs = [big_buffer(s, sharedmem.SHARE_FROM) for s in range(1, 9)]
        with anypool.Pool("process", 2) as pool:
            got = list(pool.map(st.describe, [pickle.PickleBuffer(b) for b in bufs]))
        assert [g[3] for g in got] == [zlib.crc32(b) for b in bufs]
        assert all(g[1] for g in got)
        assert eventually(lambda: memfds() == set())

    def test_shared_object_reaches_many_tasks_by_reference(self) -> None:
        shared = anypool.share(big_buffer(6))
        third = BIG // 3
        parts = [pickle.PickleBuffer(shared[i * third:(i + 1) * third]) for i in range(3)]
        with anypool.Pool("process", 2) as pool:
            got = list(pool.map(st.describe, parts))
            assert pool.submit(st.try_write, pickle.PickleBuffer(shared)).result(30) == "TypeError"
        assert [g[3] for g in got] == [zlib.crc32(shared[i * third:(i + 1) * third]) for i in range(3)]
        assert len(memfds()) == 1  # only share()'s own file: no copy was made
        del shared, parts
        assert eventually(lambda: memfds() == set())

    def test_nothing_leaks_when_the_worker_crashes(self, shm_listing: set[str]) -> None:
        with anypool.Pool("process", 1) as pool:
            fut = pool.submit(st.crash_holding, pickle.PickleBuffer(big_buffer(7)))
            with pytest.raises(anypool.WorkerCrashed):
                fut.result(30)
            del fut
            assert eventually(lambda: memfds() == set())
            # the replacement worker gets large buffers as before
            assert pool.submit(st.describe, pickle.PickleBuffer(big_buffer(8))).result(30)[1] is True
        assert eventually(lambda: memfds() == set())
        assert _shm() == shm_listing

    def test_nothing_outlives_a_killed_pool_process(self, shm_listing: set[str], tmp_path: object) -> None:
        code = f"""
import os, pickle, signal, sys
sys.path[:0] = {[os.path.dirname(__file__)]!r}
import anypool, sharedmem_tasks as st
if __name__ == "__main__":
    shared = anypool.share(bytearray({BIG}))
    pool = anypool.Pool("process", 2)
    futs = [pool.submit(st.hold, pickle.PickleBuffer(bytearray({BIG})), 60),
            pool.submit(st.hold, pickle.PickleBuffer(shared), 60)]
    import time; time.sleep(1.5)
    print(" ".join(str(c.pid) for c in __import__("psutil").Process().children(recursive=True)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=40)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        pids = [int(p) for p in proc.stdout.split()]
        assert pids, proc.stderr

        def alive(pid: int) -> bool:
            try:
                p = psutil.Process(pid)
                cmd = " ".join(p.cmdline())
                return p.status() != psutil.STATUS_ZOMBIE and not any(s in cmd for s in SERVICES)
            except psutil.Error:
                return False

        # the workers notice their pool died and exit; with them goes the last
        # reference to the shared memory, which was never in /dev/shm at all
        assert eventually(lambda: not any(alive(p) for p in pids), 10)
        assert _shm() == shm_listing


class TestNumpy:
    def test_arrays_arrive_read_only_with_their_values(self) -> None:
        np = pytest.importorskip("numpy")
        arrays = [np.arange(BIG // 8, dtype=np.float64) * k for k in range(1, 4)]
        with anypool.Pool("process", 2) as pool:
            got = list(pool.map(st.numpy_info, arrays))
        for a, (total, writeable, wrote) in zip(arrays, got, strict=True):
            assert total == float(a.sum())
            assert writeable is False
            assert "read-only" in wrote
        assert eventually(lambda: memfds() == set())

    def test_share_refuses_arrays_of_python_objects(self) -> None:
        """Their bytes are pointers: copied, they were read after the objects were freed."""
        np = pytest.importorskip("numpy")
        objects = np.array([bytearray(b"x"), 1, None], dtype=object)
        with pytest.raises(TypeError, match="dtype=object"):
            anypool.share(objects)
        with pytest.raises(TypeError, match="dtype=object"):
            anypool.share(np.zeros(3, dtype=[("a", "i4"), ("b", object)]))

    def test_shared_array_keeps_shape_dtype_and_order(self) -> None:
        np = pytest.importorskip("numpy")
        a = np.asfortranarray(np.arange(BIG // 4, dtype=np.int32).reshape(-1, 64))
        shared = anypool.share(a)
        assert isinstance(shared, np.ndarray)
        assert shared.flags.f_contiguous
        assert shared.dtype == a.dtype
        assert shared.shape == a.shape
        assert (shared == a).all()
        with anypool.Pool("process", 1) as pool:
            total, writeable, _ = pool.submit(st.numpy_info, shared[:, :10]).result(30)
        assert total == float(a[:, :10].sum())
        assert writeable is False
