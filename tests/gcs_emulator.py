"""A local, in-memory Google Cloud Storage emulator for tests of gs:// paths.

`running_emulator()` starts gcp-storage-emulator in a subprocess on 127.0.0.1 and gives
the environment that routes a child process's gcsfs, etils.epath, tensorstore and Orbax
to it, with no credentials and no GCE metadata probes. The test process itself only talks
to the emulator over plain HTTP (urllib), so it never imports gcsfs or google-auth and its
own environment is left alone:

  with running_emulator() as gcs:
    gcs.upload("data/x.bin", b"...")
    subprocess.run([sys.executable, "-c", CODE], env={**os.environ, **gcs.env()}, check=True)
    assert "ckpt/2/commit_success.txt" in gcs.names()

`closed_port_env()` gives the same environment pointed at a port that refuses every
connection, for tests of an unreachable bucket.

The server alone runs as `python tests/gcs_emulator.py --port PORT --bucket BUCKET`
(PORT 0 picks a free port; `--port-file` receives the bound port).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import pathlib
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from typing import Iterator

_HOST = "127.0.0.1"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0
_HTTP_TIMEOUT_S = 10.0
# Plain HTTP to 127.0.0.1 only: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serve(port: int, bucket: str, port_file: str | None = None) -> None:
  """Serves an in-memory emulator holding an empty `bucket` until the process is killed.

  Adds the JSON API's `objects.move` route (`POST .../o/SRC/moveTo/o/DST`), which the
  emulator lacks: gcsfs renames with it, and on the emulator's 501 it retries for ~32 s
  per object before falling back to copy and delete.

  Args:
    port: port to listen on at 127.0.0.1; 0 picks a free one.
    bucket: name of the bucket to create.
    port_file: if given, the bound port is written there once the server listens.
  """
  # Imported here: only the server process loads the emulator, never the test process.
  import http.server
  from gcp_storage_emulator import server, settings
  from gcp_storage_emulator.exceptions import Conflict, NotFound
  from gcp_storage_emulator.handlers import buckets, objects
  from gcp_storage_emulator.storage import Storage

  def move(request, response, storage, *args, **kwargs):
    """Copies SRC to DST, then deletes SRC (the emulator's own copy logic)."""
    del args, kwargs  # Unused.
    params = request.params
    try:
      moved = objects._copy(  # pylint: disable=protected-access
          request.base_url, storage, params["bucket_name"], params["object_id"],
          params["bucket_name"], params["dest_object_id"])
      storage.delete_file(params["bucket_name"], params["object_id"])
      response.json(moved)
    except NotFound:
      # The emulator's response writer needs an HTTPStatus: a plain int crashes it and
      # the client sees "Server disconnected".
      response.status = HTTPStatus.NOT_FOUND
    except Conflict as err:
      objects._handle_conflict(response, err)  # pylint: disable=protected-access

  def download(request, response, storage, *args, **kwargs):
    """The emulator's download, plus the generation header real GCS sends: TensorStore
    reads an object's generation from it ("Malformed StorageGeneration" without)."""
    emulator_download(request, response, storage, *args, **kwargs)
    try:
      found = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
      return
    response["x-goog-generation"] = found["generation"]
    response["x-goog-metageneration"] = found["metageneration"]

  move_route = (rf"^{settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/"
                r"(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
                {server.POST: move})
  # Also in place, for the object GET with alt=media, which calls `download` by name.
  emulator_download, objects.download = objects.download, download
  handlers = tuple((pattern, {method: download if handler is emulator_download else handler
                              for method, handler in methods.items()})
                   for pattern, methods in server.HANDLERS)
  # Before the generic object route, which would otherwise match SRC/moveTo/o/DST.
  server.HANDLERS = (move_route,) + handlers

  storage = Storage(use_memory_fs=True)
  buckets.create_bucket(bucket, storage)
  httpd = http.server.HTTPServer((_HOST, port),
                                 functools.partial(server.RequestHandler, storage))
  if port_file:
    tmp = f"{port_file}.tmp"
    pathlib.Path(tmp).write_text(str(httpd.server_address[1]))
    os.replace(tmp, port_file)  # Atomic: the reader never sees a partial number.
  httpd.serve_forever()


def _client_env(endpoint: str, metadata: str, gcloud_config: str) -> dict[str, str]:
  """Variables that route a child's GCS clients to `endpoint` with no credentials.

  They must be set before fsspec, gcsfs, google.auth or tensorstore is imported (each
  reads them at import), and before etils.epath's first gs:// call (it caches its
  backend), hence for a child process rather than this one.

  Args:
    endpoint: http://HOST:PORT of the storage server.
    metadata: HOST:PORT for the GCE metadata server; it should refuse connections.
    gcloud_config: an empty directory, so no developer gcloud login is picked up.
  """
  return {
      # gcsfs and google-cloud-storage (which also goes anonymous when this is set).
      "STORAGE_EMULATOR_HOST": endpoint,
      # tensorstore's "gcs" kvstore, which Orbax uses for array data.
      "TENSORSTORE_GCS_HTTP_URL": endpoint,
      # etils.epath: fsspec/gcsfs even where TensorFlow is installed; TF's GCS filesystem
      # has its endpoint compiled in and cannot reach an emulator.
      "EPATH_USE_TF": "false",
      # gcsfs: anonymous, google.auth.default() is never called.
      "FSSPEC_GCS_TOKEN": "anon",
      # gcsfs: plain GCSFileSystem, without a storage-control gRPC probe per bucket.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      # tensorstore: a fixed bearer token (the emulator ignores it), no credential search.
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy-token",
      # google-auth, gcsfs, TF: no GCE metadata probe; and should anything still try,
      # the metadata host refuses at once (google-auth reads HOST and IP, tensorstore
      # reads ROOT) instead of reaching 169.254.169.254.
      "NO_GCE_CHECK": "true",
      "GCE_METADATA_HOST": metadata,
      "GCE_METADATA_IP": metadata,
      "GCE_METADATA_ROOT": metadata,
      "CLOUDSDK_CONFIG": gcloud_config,
      "GOOGLE_CLOUD_PROJECT": "test-project",
      # requests (google-cloud-storage) and curl (tensorstore) honour proxy variables.
      "NO_PROXY": f"{_HOST},localhost",
      "no_proxy": f"{_HOST},localhost",
  }


def _refusing_socket() -> socket.socket:
  """A socket bound to a 127.0.0.1 port but not listening: connections are refused.

  Holding it keeps the port from being reused while a test relies on it being closed.
  """
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.bind((_HOST, 0))
  return sock


class GcsEmulator:
  """A running emulator: its address, a child's environment, and direct object access."""

  def __init__(self, port: int, bucket: str, metadata_port: int, gcloud_config: str):
    self.url = f"http://{_HOST}:{port}"
    self.bucket = bucket
    self._metadata = f"{_HOST}:{metadata_port}"
    self._gcloud_config = gcloud_config

  def env(self) -> dict[str, str]:
    """Environment variables for a child process that uses gs://BUCKET on this emulator.

    Only the GCS variables: merge them over the rest, `{**os.environ, **gcs.env()}`.
    """
    return _client_env(self.url, self._metadata, self._gcloud_config)

  def upload(self, name: str, data: bytes) -> None:
    """Writes the object `name` (e.g. "dir/file.bin") with the content `data`."""
    # A multipart upload, as gcsfs sends: the emulator's media upload fails on b"".
    boundary = f"gcs_emulator_{secrets.token_hex(8)}"
    body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps({'name': name})}\r\n"
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n"
            f"{base64.b64encode(data).decode()}\r\n--{boundary}--\r\n")
    self._request(f"/upload/storage/v1/b/{self._bucket_path}/o?uploadType=multipart",
                  data=body.encode(),
                  headers={"Content-Type": f"multipart/related; boundary={boundary}"})

  def names(self) -> list[str]:
    """All object names in the bucket, sorted."""
    names, token = [], None
    while True:
      query = urllib.parse.urlencode({"pageToken": token} if token else {})
      page = json.loads(self._request(f"/storage/v1/b/{self._bucket_path}/o?{query}"))
      names += [item["name"] for item in page.get("items") or []]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def read(self, name: str) -> bytes:
    """The content of the object `name`; FileNotFoundError if there is none."""
    object_path = urllib.parse.quote(name, safe="")
    try:
      return self._request(
          f"/download/storage/v1/b/{self._bucket_path}/o/{object_path}?alt=media")
    except urllib.error.HTTPError as err:
      if err.code == HTTPStatus.NOT_FOUND:
        raise FileNotFoundError(f"gs://{self.bucket}/{name}") from err
      raise

  @property
  def _bucket_path(self) -> str:
    return urllib.parse.quote(self.bucket, safe="")

  def _request(self, path: str, data: bytes | None = None,
               headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(self.url + path, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    with _OPENER.open(request, timeout=_HTTP_TIMEOUT_S) as response:
      return response.read()


def _wait_until_serving(proc: subprocess.Popen, port_file: pathlib.Path,
                        log_path: pathlib.Path) -> int:
  """The emulator's port once it answers its health check; RuntimeError after 30 s."""
  deadline = time.monotonic() + _START_TIMEOUT_S
  while True:
    if proc.poll() is not None:
      raise RuntimeError(f"GCS emulator exited with code {proc.returncode} at start:\n"
                         + log_path.read_text(errors="replace")[-2000:])
    if port_file.exists():
      port = int(port_file.read_text())
      try:
        with _OPENER.open(f"http://{_HOST}:{port}/", timeout=1) as response:
          response.read()
        return port
      except OSError:
        pass
    if time.monotonic() > deadline:
      raise RuntimeError(f"GCS emulator did not answer within {_START_TIMEOUT_S:.0f} s:\n"
                         + log_path.read_text(errors="replace")[-2000:])
    time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
  """Terminates `proc`, and kills it if it is still there after a few seconds."""
  if proc.poll() is None:
    proc.terminate()
    try:
      proc.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


@contextlib.contextmanager
def running_emulator(bucket: str = "bucket") -> Iterator[GcsEmulator]:
  """Runs an in-memory emulator with an empty `bucket` for the duration of the block.

  The server is a subprocess of this Python on a free 127.0.0.1 port; it is stopped and
  its temporary directory (log, empty gcloud config) removed on exit.
  """
  with tempfile.TemporaryDirectory(prefix="gcs_emulator_") as tmp, \
      contextlib.closing(_refusing_socket()) as metadata:
    workdir = pathlib.Path(tmp)
    gcloud_config = workdir / "gcloud"
    gcloud_config.mkdir()
    port_file, log_path = workdir / "port", workdir / "emulator.log"
    with open(log_path, "wb") as log:
      proc = subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), "--port", "0", "--bucket", bucket,
           "--port-file", str(port_file)],
          cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
      port = _wait_until_serving(proc, port_file, log_path)
      yield GcsEmulator(port, bucket, metadata.getsockname()[1], str(gcloud_config))
    finally:
      _stop(proc)


@contextlib.contextmanager
def closed_port_env() -> Iterator[dict[str, str]]:
  """The environment of `GcsEmulator.env()`, with every endpoint refusing connections.

  For tests of an unreachable bucket. The port stays closed, and the empty gcloud config
  directory exists, for the duration of the block.
  """
  with tempfile.TemporaryDirectory(prefix="gcs_closed_") as gcloud_config, \
      contextlib.closing(_refusing_socket()) as closed:
    port = closed.getsockname()[1]
    yield _client_env(f"http://{_HOST}:{port}", f"{_HOST}:{port}", gcloud_config)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
  parser.add_argument("--bucket", required=True)
  parser.add_argument("--port-file", help="where to write the bound port")
  args = parser.parse_args()
  serve(args.port, args.bucket, args.port_file)


if __name__ == "__main__":
  # Run as a script, this file's folder (tests/) heads sys.path; drop it so that no test
  # module can shadow a package the emulator imports.
  _here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
  main()
