"""The rules a setting's value must meet before anything starts: Kafka names and addresses, URLs,
allowlist entries, the SASL combinations this build of librdkafka serves, and no unknown variables.

Each rule is a function that returns the value or raises ValueError with how to fix it; the settings
attach them, so that a bad value stops the worker at startup, in well under a second,
before the model loads or any client connects, with a ConfigError naming the variable.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict

# Kafka's own limits on a topic name (kafka.common.internals.Topic).
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")
# The mechanisms the confluent-kafka wheels serve. GSSAPI (Kerberos) needs a librdkafka built with
# Cyrus SASL, which the wheels are not: it would fail only when the client is created.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
_NEEDS_PASSWORD = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def kafka_topic(value: str) -> str:
    if not _TOPIC.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{value!r} is no Kafka topic name: use 1-249 letters, digits, '.', '_' or '-'")
    return value


def bootstrap_servers(value: str) -> str:
    for server in value.split(","):
        match = _HOST_PORT.fullmatch(server.strip())
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise ValueError(f"{server.strip()!r}: list brokers as host:port, separated by commas, e.g. kafka-1:9092")
    return value


def http_url(value: str) -> str:
    """An http(s) URL with a host: an S3 endpoint or a Schema Registry (a comma-separated list is one
    URL each)."""
    for url in value.split(","):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url.strip()!r}: give an http:// or https:// URL with a host, e.g. https://s3.example.com")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ValueError(f"{url.strip()!r}: the port is out of range") from None
    return value


def allowlist_entry(value: str) -> str:
    """A bucket, or bucket/prefix, whose segments are plain (see s3/reader.py's Allowlist)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        bare = value.split("://", 1)[1]
        raise ValueError(f"{value!r}: drop the scheme, the entries are buckets: write {bare!r}")
    bucket, _, prefix = value.partition("/")
    if not bucket or (prefix and not plain_segments(prefix.removesuffix("/"))):
        raise ValueError(f"{value!r}: use a bucket, or bucket/prefix without empty, '.' or '..' segments")
    return value


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


def names_a_file(pretrained: str) -> bool:
    """Whether model.pretrained is a local checkpoint path rather than a tag, "none" or an s3:// URI:
    it has a folder in it or a checkpoint's suffix."""
    value = pretrained.strip()
    if value.lower() in ("", "none") or value.lower().startswith("s3:"):
        return False
    return "/" in value or value.startswith("~") or Path(value).suffix in CHECKPOINT_SUFFIXES


def expanded(path: str | Path) -> Path:
    """`path` with a leading ~ or ~user expanded; as it is where there is no such home."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "~nobody-here": pathlib cannot determine that home directory
        return Path(path)


def checkpoint_file(pretrained: str) -> str:
    path = expanded(pretrained.strip())
    if names_a_file(pretrained) and not path.is_file():
        if path.is_dir():
            raise ValueError(f"{pretrained} is a folder; pass a checkpoint file, or model_name local-dir:{pretrained}")
        raise ValueError(f"no such checkpoint file: {pretrained}")
    return pretrained


def existing_folder(path: Path) -> Path:
    if not expanded(path).is_dir():
        raise ValueError(f"{path} is not a folder")
    return path


def folder_to_be(path: Path) -> Path:
    """A folder the worker may create: anything but an existing file."""
    if expanded(path).exists() and not expanded(path).is_dir():
        raise ValueError(f"{path} is a file, not a folder")
    return path


def plain_segments(path: str) -> bool:
    """Whether every "/"-separated segment of `path` is a name: none empty, "." or ".."."""
    return all(segment not in ("", ".", "..") for segment in path.split("/"))


def sasl_mechanism(mechanism: str | None, protocol: str) -> str | None:
    sasl = protocol.startswith("SASL_")
    if sasl and mechanism is None:
        raise ValueError(f"security_protocol {protocol} needs a mechanism: one of {', '.join(SASL_MECHANISMS)}")
    if mechanism is None:
        return None
    if not sasl:
        raise ValueError(f"{mechanism} is set, but security_protocol is {protocol}: use SASL_SSL (or SASL_PLAINTEXT)")
    upper = mechanism.upper()
    if upper == "GSSAPI":
        raise ValueError("GSSAPI (Kerberos) is not built into this worker's librdkafka: use SCRAM-SHA-512, "
                         "SCRAM-SHA-256, PLAIN or OAUTHBEARER")
    if upper not in SASL_MECHANISMS:
        raise ValueError(f"{mechanism!r}: use one of {', '.join(SASL_MECHANISMS)}")
    return upper


def needs_credentials(mechanism: str | None) -> bool:
    return mechanism in _NEEDS_PASSWORD


def unknown_variables(environ: Mapping[str, str], *, prefix: str, known: Iterable[str]) -> list[tuple[str, str | None]]:
    """The variables in `environ` that start with `prefix` but name no setting, each with the closest
    setting's variable (or None). Names compare upper-cased, as the settings read them."""
    known_names = sorted(name.upper() for name in known)
    suffixes = {name.removeprefix(prefix): name for name in known_names}
    unknown = []
    for variable in environ:
        name = variable.upper()
        if not name.startswith(prefix) or name in known_names:
            continue
        close = difflib.get_close_matches(name.removeprefix(prefix), list(suffixes), n=1, cutoff=0.7)
        unknown.append((variable, suffixes[close[0]] if close else None))
    return sorted(unknown)


Topic = Annotated[str, AfterValidator(kafka_topic)]
HttpUrl = Annotated[str, AfterValidator(http_url)]
AllowlistEntry = Annotated[str, AfterValidator(allowlist_entry)]


def upper_case(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


class Section(BaseModel):
    """A section of the settings: frozen, and an unknown name in it is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")
