"""A real HTTP S3 endpoint for tests: moto's server mode on a free port of 127.0.0.1.

Why a server instead of moto's in-process mock: the worker (and any subprocess running it) talks to S3
over HTTP through plain boto3 with an ``endpoint_url``, exactly as it would talk to AWS S3, MinIO or
Ceph RGW, so the tests exercise the same code path. Credentials are dummies passed to boto3 directly;
this module never changes os.environ. A subprocess gets its settings from ``S3Server.env()``.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import boto3

if TYPE_CHECKING:  # imported where the server starts: the GPU machine uses this module's helpers, without moto
    from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"  # moto accepts any credentials; these only have to be present


class S3Server:
    """moto S3 over HTTP in a background thread of this process."""

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self._endpoint_url: str | None = None

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("S3 server is not running")
        return self._endpoint_url

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("S3 server is already running")
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO: thousands of lines in a streaming test's report.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self._endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        server, self._server, self._endpoint_url = self._server, None, None
        if server is not None:
            server.stop()  # werkzeug closes the listening socket when serve_forever() returns

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def client(self) -> Any:
        """A plain boto3 S3 client for this endpoint. Call ``.close()`` on it when done."""
        return endpoint_client(self.endpoint_url)

    def reset(self) -> None:
        """Forget every bucket and object (moto's ``POST /moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (e.g. the worker) so that its boto3 uses this endpoint.

        Merge it into a copy: ``subprocess.run(..., env={**os.environ, **s3.env()})``.
        botocore reads AWS_ENDPOINT_URL_S3 (and AWS_ENDPOINT_URL for other services) itself.
        """
        return endpoint_env(self.endpoint_url)


class Endpoint(Protocol):
    """A test S3 endpoint: S3Server here, or a benchmark server (harness/s3_process.py)."""

    def client(self) -> Any: ...


def fill_bucket(endpoint: Endpoint, bucket: str, objects: Iterable[tuple[str, bytes]]) -> None:
    """Create `bucket` on `endpoint` and put each (key, bytes) of `objects` in it."""
    client = endpoint.client()
    client.create_bucket(Bucket=bucket)
    for key, data in objects:
        client.put_object(Bucket=bucket, Key=key, Body=data)
    client.close()


def endpoint_client(endpoint_url: str, **options: Any) -> Any:
    """A boto3 S3 client for a test endpoint with the test credentials (`options` go to ``client()``)."""
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, **options)


def endpoint_env(endpoint_url: str) -> dict[str, str]:
    """The environment that points boto3 in a subprocess at a test endpoint with the test credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
