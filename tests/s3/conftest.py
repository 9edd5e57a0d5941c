"""A real S3 server for the S3 store's tests: s3proxy (lab/s3server.py) over HTTPS with a test CA.

One server per session (it takes seconds to start); one bucket per test. The standard AWS variables that
lpm reads are set for the test (and so for the ``lpm`` processes it runs): the endpoint, the region, the
credentials and ``AWS_CA_BUNDLE``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from lab.s3server import S3Server, versions

_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3proxy"))
    server.start()
    yield server
    server.stop()


class Bucket:
    """One test's bucket, and a plain client's view of it (what is really there, not what lpm says)."""

    def __init__(self, server: S3Server, name: str) -> None:
        self.server = server
        self.name = name
        self.url = f"s3://{name}/checkpoints"

    async def _call(self, method: str, **kwargs: Any) -> Any:
        config = AioConfig(request_checksum_calculation="when_required",
                           response_checksum_validation="when_required", retries={"max_attempts": 1})
        async with self._client(config) as client:
            return await getattr(client, method)(**kwargs)

    def _client(self, config: AioConfig | None = None) -> Any:
        # The server's own credentials and CA, whatever a test set in the environment for lpm.
        env = self.server.env
        return get_session().create_client(
            "s3", config=config, endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            verify=env["AWS_CA_BUNDLE"])

    def call(self, method: str, **kwargs: Any) -> Any:
        return asyncio.run(self._call(method, Bucket=self.name, **kwargs))

    def keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.call("list_objects_v2").get("Contents", []))

    def uploads(self) -> list[str]:
        return sorted(u["Key"] for u in self.call("list_multipart_uploads").get("Uploads", []))

    def get(self, key: str) -> bytes:
        async def read() -> bytes:
            async with self._client() as client:
                response = await client.get_object(Bucket=self.name, Key=key)
                async with response["Body"] as body:
                    return bytes(await body.read())
        return asyncio.run(read())

    def create(self) -> None:
        self.call("create_bucket")


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def own_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A server of the test's own, which it may kill and start again (``S3Server.kill``), with lpm's
    environment pointing at it."""
    server = S3Server(tmp_path / "s3")
    server.start()
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_env: S3Server) -> Bucket:
    made = Bucket(s3_env, f"lpm-test-{next(_buckets)}")
    made.create()
    return made


def legacy_version() -> str:
    """The s3proxy that ignores If-None-Match (scripts/s3/s3proxy.versions)."""
    return versions()[1]


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    path = tmp_path / "kubelet-checkpoints"
    path.mkdir(mode=0o700)
    return path
