"""Which failures say "the store is away, try again" (StoreUnavailable) and which say something about the request
or the bytes: the mapping from botocore's and the OS's errors, row by row (botocore's own exception classes)."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from watcher.errors import AlreadyComplete, StoreError, StoreUnavailable, UnknownCheckpoint, UnsafeNameError
from watcher.s3 import client as s3client
from watcher.store import fsio


def _answer(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize(("error", "kind"), [
    (_answer(500, "InternalError"), StoreUnavailable),
    (_answer(503, "SlowDown"), StoreUnavailable),
    (_answer(503, "ServiceUnavailable"), StoreUnavailable),
    (_answer(400, "RequestTimeout"), StoreUnavailable),
    (_answer(429, "TooManyRequests"), StoreUnavailable),
    (EndpointConnectionError(endpoint_url="https://s3.example:9000"), StoreUnavailable),
    (_answer(501, "NotImplemented"), s3client.ConditionalPutUnsupported),
    (_answer(412, "PreconditionFailed"), AlreadyComplete),
    (_answer(404, "NoSuchKey"), UnknownCheckpoint),
    (_answer(403, "AccessDenied"), StoreError),
    (_answer(400, "InvalidRequest"), StoreError),
])
def test_s3_answers_map_to_lpms_errors(error: Exception, kind: type[StoreError]) -> None:
    with pytest.raises(StoreError) as raised, s3client.errors("store s3://b/p: read k"):
        raise error
    assert type(raised.value) is kind, raised.value
    assert str(raised.value).startswith("store s3://b/p: read k: "), raised.value


@pytest.mark.parametrize(("number", "kind"), [
    (errno.ESTALE, StoreUnavailable),
    (errno.EIO, StoreUnavailable),
    (errno.ETIMEDOUT, StoreUnavailable),
    (errno.ENOTCONN, StoreUnavailable),
    (errno.EACCES, StoreError),
    (errno.ENOSPC, StoreError),
    (errno.ELOOP, UnsafeNameError),
])
def test_filesystem_errors_map_to_lpms_errors(number: int, kind: type[Exception]) -> None:
    with pytest.raises(Exception) as raised, fsio.os_errors("store /mnt/checkpoints: reading u/c/app/dump.tar.zst"):
        raise OSError(number, "x")
    assert type(raised.value) is kind, raised.value
    assert str(raised.value).startswith("store /mnt/checkpoints: reading u/c/app/dump.tar.zst: "), raised.value
