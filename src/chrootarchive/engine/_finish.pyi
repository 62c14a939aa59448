# The helper's loop over one batch, compiled (_finish.c); finisher._finish_batch is its
# reference. (errno, index of the failed file, indexes of the files given back) or None.
def finish(
    batch: bytes | bytearray | memoryview, fds: list[int], source: int, ring: int, /
) -> tuple[int, int, tuple[int, ...]] | None: ...
