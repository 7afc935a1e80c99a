"""The on-disk model artifact cache: download a file once, verify its sha256, reuse it.

Files are stored under their sha256, written to a temporary name and renamed into place, so a
reader never sees a partial file. An exclusive ``flock`` per artifact makes concurrent callers
(threads or processes sharing the cache folder) download once: the others wait and reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class ArtifactError(Exception):
    """A model file could not be downloaded or did not match its checksum."""


class ArtifactStore:
    """A folder of verified downloads, keyed by sha256."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def path_for(self, url: str, sha256: str) -> Path:
        """Where the artifact lives once downloaded: ``<root>/<sha256>/<file name>``."""
        name = Path(urlsplit(url).path).name or "artifact"
        return self.root / sha256.lower() / name

    def fetch(
        self, url: str, sha256: str, *, timeout_s: float = 120.0, progress: bool = False
    ) -> Path:
        """The verified local copy of ``url``, downloading it first if needed. Blocking.

        ``progress`` shows a tqdm bar on stderr (for the command line).
        """
        sha256 = sha256.lower()
        target = self.path_for(url, sha256)
        if target.exists() and _sha256_of(target) == sha256:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(target.parent / ".lock"):
            # Another caller may have finished the download while we waited for the lock.
            if target.exists():
                if _sha256_of(target) == sha256:
                    return target
                logger.warning("cached %s does not match its sha256; downloading again", target)
            self._download(url, sha256, target, timeout_s, progress)
        return target

    def _download(
        self, url: str, sha256: str, target: Path, timeout_s: float, progress: bool
    ) -> None:
        logger.info("downloading %s", url)
        started = time.perf_counter()
        digest = hashlib.sha256()
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(handle, "wb") as out, _bar(progress, target.name) as bar:
                deadline = time.monotonic() + timeout_s
                timeout = httpx.Timeout(min(timeout_s, 30.0))
                with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
                    if response.status_code != 200:
                        raise ArtifactError(f"GET {url} answered HTTP {response.status_code}")
                    if bar is not None:
                        bar.total = int(response.headers.get("content-length", 0)) or None
                    for chunk in response.iter_bytes(_CHUNK):
                        if time.monotonic() > deadline:
                            raise ArtifactError(f"download of {url} took over {timeout_s:g} s")
                        digest.update(chunk)
                        out.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise ArtifactError(
                    f"{url} has sha256 {digest.hexdigest()}, expected {sha256}; refusing it"
                )
            os.replace(temporary, target)
        except httpx.HTTPError as error:
            raise ArtifactError(
                f"cannot download {url}: {error or type(error).__name__}"
            ) from error
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        logger.info(
            "downloaded %s (%d bytes) in %.2f s",
            target.name,
            target.stat().st_size,
            time.perf_counter() - started,
        )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _bar(show: bool, name: str) -> Iterator[Any]:
    if not show:
        yield None
        return
    from tqdm import tqdm  # only the command line shows progress

    with tqdm(desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False) as bar:
        yield bar
