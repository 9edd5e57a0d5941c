"""The S3 client: aiobotocore, configured from the standard AWS environment, with its errors mapped once.

Where everything comes from is botocore's own chain, so a store is configured as any AWS tool is:
the endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (or the config file), the region from
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
or the shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``; the DaemonSet mounts it from a Secret),
the CA bundle from ``AWS_CA_BUNDLE``. TLS is always verified: ``verify`` is never passed, and an endpoint
that is not ``https://`` is refused before any request (a dump is process memory). Credentials are never
logged or put into an error message.

Per-part CRC checksums are off (``when_required``): measured, botocore's default doubled an upload's CPU
and halved its rate on 2 cores (docs/s3.md), and each dump's SHA-256 is in its manifest and checked on
every read, over TLS.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import exceptions as boto

from watcher.errors import AlreadyComplete, StoreError, StoreUnavailable, UnknownCheckpoint
from watcher.s3.location import S3Location

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
"""Seconds without a byte from the server before a request is given up on (botocore then retries)."""
MAX_ATTEMPTS = 3
_BUSY = frozenset({"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"})
"""Codes S3 servers send when they are overloaded or slow, not when the request is wrong (some with a 4xx)."""


class ConditionalPutUnsupported(StoreError):
    """The server does not honour ``If-None-Match: *``: two writers could both publish, so lpm publishes nothing."""


Client = Any
"""An aiobotocore S3 client (the library ships no types; every call goes through this module's helpers)."""


@contextlib.asynccontextmanager
async def connect(location: S3Location) -> AsyncIterator[Client]:
    """A client for ``location``'s bucket, configured from the environment; the endpoint must be https."""
    # botocore says at INFO where it found credentials and the endpoint, on every client: noise in lpm's log.
    for name in ("botocore", "aiobotocore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    config = AioConfig(
        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    with errors(f"store {location}"):
        async with get_session().create_client("s3", config=config) as client:
            endpoint = str(client.meta.endpoint_url)
            if not endpoint.startswith("https://"):
                raise StoreError(f"store {location}: endpoint {endpoint} is not https; lpm sends checkpoints "
                                 "only over verified TLS (set AWS_ENDPOINT_URL to an https:// URL)")
            yield client


def _code(err: boto.ClientError) -> tuple[str, int]:
    response: dict[str, Any] = err.response
    return str(response.get("Error", {}).get("Code", "")), int(response.get("ResponseMetadata", {})
                                                                    .get("HTTPStatusCode", 0))


@contextlib.contextmanager
def errors(what: str) -> Iterator[None]:
    """Map botocore's and aiohttp's errors into lpm's, naming ``what`` and the reason (never a credential)."""
    try:
        yield
    except boto.ClientError as err:
        code, status = _code(err)
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload"):
            raise UnknownCheckpoint(f"{what}: does not exist ({code})") from None
        if code == "NoSuchBucket":
            raise StoreError(f"{what}: the bucket does not exist") from None
        if code == "PreconditionFailed" or status == 412:
            raise AlreadyComplete(f"{what}: already there (the conditional put was refused: another writer "
                                  "published first)") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
            raise StoreError(f"{what}: the server refused the credentials ({code}); check AWS_ACCESS_KEY_ID / "
                             "the credentials file and the bucket's policy") from None
        if code in ("NotImplemented", "501"):
            raise ConditionalPutUnsupported(f"{what}: the server does not implement it ({code})") from None
        if status >= 500 or status == 429 or code in _BUSY:  # after botocore's own retries
            raise StoreUnavailable(f"{what}: the server failed on its side ({status} {code})") from None
        raise StoreError(f"{what}: the server answered {status} {code}") from None
    except boto.NoCredentialsError:
        raise StoreError(f"{what}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                         "AWS_SHARED_CREDENTIALS_FILE)") from None
    except boto.NoRegionError:
        raise StoreError(f"{what}: no region (set AWS_REGION)") from None
    except boto.SSLError as err:
        raise StoreError(f"{what}: TLS verification failed ({_short(err)}); a private CA goes in "
                         "AWS_CA_BUNDLE") from None
    except (boto.EndpointConnectionError, boto.ConnectionError, boto.ConnectTimeoutError,
            boto.ReadTimeoutError, aiohttp.ClientError, ConnectionError) as err:
        raise StoreUnavailable(f"{what}: the server is unreachable or went away ({_short(err)})") from None
    except boto.BotoCoreError as err:
        raise StoreError(f"{what}: {_short(err)}") from None


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."
