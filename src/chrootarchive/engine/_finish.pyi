from typing import Any

# The helper's loop over one batch, compiled (_finish.c); finisher._finish_batch is its
# reference. (errno, index of the failed file, indexes of the files given back) or None.
def finish(
    batch: bytes | bytearray | memoryview, fds: list[int], source: int, ring: int, /
) -> tuple[int, int, tuple[int, ...]] | None: ...

# The batch a Finisher is making: its members and add_new(), in C; finisher._Batch is
# its reference, whose members and signature these are.
class Batch:
    def add_new(
        self,
        path: str,
        encoded: bytes,
        mode: int,
        data: memoryview | bytes,
        offset: int,
        size: int,
        atime_ns: int,
        mtime_ns: int,
        entry: str,
        token: object,
        /,
    ) -> bool: ...
    def __getattr__(self, name: str) -> Any: ...
