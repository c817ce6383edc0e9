"""Finished studies' summaries, reports and plots, kept in the API process, and their HTTP validators.

A study whose status is done, cancelled or failed no longer changes: it is finished only once none
of its jobs is queued or running, and a late worker's report is refused (its lease is gone). So
its summary, report and plots are computed once and kept, in a bounded LRU per application. The
key holds the study's identity (id and creation time: ids are never reused anyway) and its
finished state (status, finished_at, updated_at), so a study that is re-queued (its status
changes) or finished again (finished_at changes) misses, and a deleted study is a 404 before the
cache is asked (the study row is read on every request). A running or queued study is never
cached: its responses are computed per request and carry `Cache-Control: no-cache`.

Every response carries a strong ETag, the SHA-256 of its body (so equal tags mean equal bytes, across
restarts too), and honours If-None-Match with a 304. Finished studies' responses may be reused by
the client for `FINISHED_MAX_AGE` seconds (`private`: reads may need a token); after that, and
for running studies always, the client revalidates with the ETag. `X-Cache` says `hit` or `miss`
(a finished study's response, found or computed and stored) or `bypass` (not finished: computed).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response, status

from studies.db.models import FINISHED_STUDY, Study

FINISHED_MAX_AGE = 60  # seconds a client may reuse a finished study's response without asking
MAX_ENTRIES = 512
MAX_BYTES = 64 * 2**20  # response bodies (summaries: their JSON size, as an estimate)

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "not modified: If-None-Match names the current ETag (no body)"}
}


@dataclass(frozen=True)
class Entry:
    """A response body with its media type and ETag; `value` is what it was rendered from, if kept."""

    body: bytes
    media_type: str
    etag: str
    value: Any = None

    @classmethod
    def of(cls, body: bytes, media_type: str, value: Any = None) -> Entry:
        return cls(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"', value)


class ResponseCache:
    """A thread-safe LRU of entries, bounded in count and in body bytes."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: Hashable, entry: Entry) -> None:
        if len(entry.body) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[key] = entry
            self._bytes += len(entry.body)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)


_create_lock = threading.Lock()


def get_cache(request: Request) -> ResponseCache:
    """The application's cache, created on first use (one per application, so per database)."""
    state = request.app.state
    cache = getattr(state, "response_cache", None)
    if cache is None:
        with _create_lock:
            cache = getattr(state, "response_cache", None)
            if cache is None:
                cache = state.response_cache = ResponseCache()
    return cache


CacheDep = Annotated[ResponseCache, Depends(get_cache)]


def study_key(study: Study) -> tuple[Hashable, ...] | None:
    """What identifies a finished study's state; None while it may still change."""
    if study.status not in FINISHED_STUDY:
        return None
    stamps = (study.created_at, study.finished_at, study.updated_at)
    return (study.id, study.status, *(None if t is None else t.isoformat() for t in stamps))


def lookup(
    cache: ResponseCache, study: Study, part: tuple[Hashable, ...], render: Callable[[], Entry]
) -> tuple[Entry, str]:
    """The entry for `part` of the study (from the cache if finished and kept), and hit/miss/bypass."""
    key = study_key(study)
    if key is None:
        return render(), "bypass"
    entry = cache.get((key, part))
    if entry is not None:
        return entry, "hit"
    entry = render()
    cache.put((key, part), entry)
    return entry, "miss"


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match's weak comparison (RFC 9110, 13.1.2): W/ prefixes are ignored; * matches."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def respond(request: Request, study: Study, entry: Entry, cache_state: str) -> Response:
    """The entry as a response with ETag, Cache-Control and X-Cache; 304 if If-None-Match matches."""
    finished = study.status in FINISHED_STUDY
    headers = {
        "ETag": entry.etag,
        "Cache-Control": f"private, max-age={FINISHED_MAX_AGE}" if finished else "private, no-cache",
        "X-Cache": cache_state,
    }
    if _matches(request.headers.get("if-none-match"), entry.etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(entry.body, media_type=entry.media_type, headers=headers)
