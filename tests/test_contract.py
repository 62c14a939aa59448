"""The job contract (``chrootarchive.contract``): one request and one reply, one codec.

The public option classes and the lean classes a job reads must not drift apart, and a
request must survive the trip to a worker (JSON) unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from chrootarchive import _wire
from chrootarchive.contract import (
    JobReply,
    JobRequest,
    LimitSpec,
    PackSpec,
    UnpackSpec,
    decode_reply,
    encode_error,
    encode_reply,
    limits_after,
)
from chrootarchive.errors import (
    BreakoutError,
    DestinationError,
    InternalError,
    LimitExceededError,
    WorkerError,
)
from chrootarchive.options import (
    IDMap,
    Limits,
    PackOptions,
    UnpackOptions,
    pack_spec,
    unpack_spec,
)

#: What the parent adds to a spec that is no option: the caller's umask (the data
#: filter gives directories its default mode; the worker's own umask is 0) and whether
#: the job lists the names it unpacks (-v, on_entry).
SPEC_ONLY = {"umask", "verbose",
             # What an image's earlier parts used (limits_after), counted by the engine.
             "used_bytes", "used_entries", "used_seconds",
             # The file the archive is written to (tar(archive_fds=...)): not packed.
             "archive_files"}
#: What only the parent acts on: never sent to a job.
PARENT_ONLY = {
    UnpackOptions: {"confine", "atomic"},
    PackOptions: {"confine", "compression", "compression_level"},
    Limits: set(),
}


@pytest.mark.parametrize(("public", "spec"), [(UnpackOptions, UnpackSpec),
                                              (PackOptions, PackSpec), (Limits, LimitSpec)])
def test_every_option_reaches_the_job_or_is_the_parents(
    public: type, spec: type[UnpackSpec | PackSpec | LimitSpec]
) -> None:
    fields = {f.name for f in dataclasses.fields(public)}
    assert set(spec.__slots__) - SPEC_ONLY == fields - PARENT_ONLY[public]


def _round_trip(request: JobRequest) -> JobRequest:
    decoded: JobRequest = JobRequest.from_wire(_wire.loads(_wire.dumps(request.to_wire())))
    return decoded


def test_an_unpack_request_survives_the_wire() -> None:
    options = UnpackOptions(
        chown=(5, 6), uid_maps=(IDMap(0, 100000, 65536),), gid_maps=(IDMap(0, 200000, 10),),
        excludes=("a/*", "!a/b"), whiteout_format="overlay", limits=Limits.strict(),
        filter="data", best_effort_xattrs=True,
    )
    request = JobRequest.make("unpack", mechanism="pivot", dest="x/y", dest_owner=(1, 2),
                              layer=True, helper=True, unpack=unpack_spec(options))
    decoded = _round_trip(request)
    assert decoded == request
    assert decoded.unpack is not None and decoded.unpack.uid_maps[0].host_id == 100000
    assert decoded.unpack.limits.timeout == 3600.0


def test_a_pack_request_survives_the_wire() -> None:
    options = PackOptions(include_files=("a", "b/c"), rebase_names={"a": "z"},
                          user_names={0: "root", 1000: "me"}, group_names={0: "wheel"},
                          uid_maps=(IDMap(0, 1000, 1),), whole_second_mtimes=True)
    request = JobRequest.make("pack", mechanism="chroot", src="/a", display="a",
                              create_dest=False, pack=pack_spec(options))
    decoded = _round_trip(request)
    assert decoded == request
    assert decoded.pack is not None and decoded.pack.user_names == {"0": "root", "1000": "me"}


@pytest.mark.parametrize("document", [
    None, [], {}, {"job": "unpack"},
    dict(JobRequest.make("unpack").to_wire(), extra=1),
    {k: v for k, v in JobRequest.make("unpack").to_wire().items() if k != "dest"},
])
def test_a_malformed_request_is_refused(document: object) -> None:
    with pytest.raises(ValueError):
        JobRequest.from_wire(document)


def test_an_unknown_job_is_refused_when_made() -> None:
    with pytest.raises(ValueError, match="unknown job"):
        JobRequest.make("format-the-disk")


def test_a_reply_and_errors_cross_as_the_same_class() -> None:
    reply = JobReply.make(3, 42, {"probe": {"mount": "EPERM"}})
    reply.confinement, reply.warnings = "pivot", ("w1",)
    assert decode_reply(_wire.loads(_wire.dumps(encode_reply(reply)))) == reply
    with pytest.raises(BreakoutError) as info:
        decode_reply(encode_error(BreakoutError("leaves the root", "../x")))
    assert info.value.entry == "../x" and info.value.message == "leaves the root"
    with pytest.raises(DestinationError):
        decode_reply(encode_error(OSError(28, "No space left on device")))
    with pytest.raises(InternalError, match="KeyError"):
        decode_reply(encode_error(KeyError("bug")))
    with pytest.raises(WorkerError):
        decode_reply({"result": {"entries": 1}})
    with pytest.raises(WorkerError):
        decode_reply("nonsense")


# -- the limits of an image's next layer (one function for the parent and the worker) --


def _spec(**limits: Any) -> LimitSpec:
    spec: LimitSpec = unpack_spec(UnpackOptions(limits=Limits(**limits))).limits
    return spec


def test_limits_after_counts_what_was_used_beside_the_caller_limits() -> None:
    spec = _spec(max_bytes=100, max_entries=50, timeout=None)
    assert (spec.used_bytes, spec.used_entries, spec.used_seconds) == (0, 0, 0.0)
    after = limits_after(spec, 30, 20, None)
    assert (after.max_bytes, after.max_entries) == (100, 50)  # the caller's, unchanged
    assert (after.used_bytes, after.used_entries) == (30, 20)
    # Counted on top of what the parts before used (the worker adds each layer's to
    # what the parent's spool used).
    again = limits_after(after, 70, 30, None)
    assert (again.used_bytes, again.used_entries) == (100, 50)  # used up exactly
    assert (spec.used_bytes, spec.used_entries) == (0, 0)  # a copy


def test_limits_after_counts_the_time_until_the_deadline() -> None:
    spec = _spec(timeout=30.0)
    after = limits_after(spec, 0, 0, time.monotonic() + 20)
    assert after.timeout == 30.0 and 9.9 < after.used_seconds <= 10.1
    with pytest.raises(LimitExceededError, match=r"limit timeout \(30 seconds\) exceeded"):
        limits_after(spec, 0, 0, time.monotonic() - 0.001)
    untimed = limits_after(_spec(timeout=None), 0, 0, None)
    assert untimed.used_seconds == 0.0


def test_limits_after_crosses_the_process_boundary() -> None:
    after = limits_after(_spec(max_bytes=100), 7, 3, None)
    assert LimitSpec.from_wire(after.to_wire()) == after
