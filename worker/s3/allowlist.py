"""Which S3 objects the worker may read: the allowlist of buckets and bucket/prefix pairs."""

from __future__ import annotations

from dataclasses import dataclass

from worker.config import env_var
from worker.config.rules import allowlist_entry, plain_segments
from worker.errors import ConfigError, SourceForbidden
from worker.formats.messages import S3Uri
from worker.text import safe_text


@dataclass(frozen=True, slots=True)
class Allowlist:
    """Buckets, or bucket/prefix pairs, that may be read. Empty allows nothing.

    Keys are paths of "/"-separated segments. A key with an empty segment ("a//b", a leading or a
    trailing "/") or a "." or ".." segment is refused whatever the entries: S3 takes such keys
    literally, but a proxy, a filesystem-backed store or a later consumer of the key may not, and
    "public/../private/x" must not read outside "public". A prefix matches whole segments only:
    "raw/2026" and "raw/2026/" both allow "2026/x.jpg" in bucket "raw", neither allows
    "2026-private/x.jpg" (nor the object "2026" itself). A bare bucket allows every key in it.
    """

    entries: tuple[tuple[str, str], ...]  # (bucket, prefix without the trailing "/"; "" for all keys)

    @classmethod
    def parse(cls, sources: tuple[str, ...]) -> Allowlist:
        """Raises ConfigError for an entry the settings would refuse (rules.allowlist_entry)."""
        entries = []
        for source in sources:
            try:
                allowlist_entry(source)
            except ValueError as exc:
                raise ConfigError(env_var("s3", "allowed_sources"), str(exc)) from None
            bucket, _, prefix = source.partition("/")
            entries.append((bucket, prefix.removesuffix("/")))
        return cls(tuple(entries))

    def check(self, uri: S3Uri) -> None:
        if not plain_segments(uri.key):
            raise SourceForbidden(f"{safe_text(uri)}: empty, '.' or '..' path segments are not allowed")
        if not any(uri.bucket == bucket and _under(uri.key, prefix) for bucket, prefix in self.entries):
            raise SourceForbidden(f"{safe_text(uri)} is outside the allowed sources")


def _under(key: str, prefix: str) -> bool:
    return not prefix or key.startswith(prefix + "/")
