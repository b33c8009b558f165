"""What a librdkafka error or log line says about the worker's connection to Kafka.

librdkafka reports connectivity in three ways, none of them a state: an error handed to ``error_cb``
(a code and a text), a log line (a facility and a text), and the statistics (each broker's state).
This module reads the first two, without any state of its own, so that every client of the worker
(the stream and the tools) reads them alike (worker/kafka/health.py keeps the state):

- ``unreachable``: no broker answers (librdkafka's ``_ALL_BROKERS_DOWN``, "N/N brokers are down");
- ``broker``: one broker's connection failed (refused, reset, timed out, name not resolved) -
  normal while a broker restarts, and nothing is wrong while another answers;
- ``auth``: a broker refused the credentials (SASL) - retrying does not change that;
- ``tls``: the TLS handshake failed (a certificate not verified, a protocol mismatch) - nor that;
- ``other``: anything else, left as librdkafka reported it.

``redact`` takes the value of any ``sasl.password`` (or other secret property) out of a text:
librdkafka can echo configuration in its lines, and nothing the worker logs may hold a secret.
"""

from __future__ import annotations

import re
from typing import Literal

from confluent_kafka import KafkaError

Kind = Literal["unreachable", "broker", "auth", "tls", "other"]

_AUTH_CODES = frozenset({
    KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError.ILLEGAL_SASL_STATE,
    KafkaError.UNSUPPORTED_SASL_MECHANISM,
})
_BROKER_CODES = frozenset({KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT})

_TLS = re.compile(
    r"ssl handshake failed|certificate verify failed|certificate has expired|self[- ]signed certificate"
    r"|unable to get local issuer certificate|hostname mismatch|broker certificate could not be verified"
    r"|incorrect security\.protocol|wrong version number|tlsv1 alert|sslv3 alert|unknown ca",
    re.IGNORECASE,
)
_AUTH = re.compile(
    r"sasl authentication (?:error|failed)|authentication failed|invalid credentials|invalid username or password"
    r"|sasl handshake failed|unsupported sasl mechanism|illegal sasl state",
    re.IGNORECASE,
)
_UNREACHABLE = re.compile(r"\b(\d+)/(\d+) brokers are down\b")
_BROKER = re.compile(
    r"connect to .* failed|connection refused|disconnected|connection reset|broken pipe|receive failed"
    r"|send failed|failed to resolve|name or service not known|connection setup timed out|timed out in state"
    r"|no route to host|network is unreachable|host is unreachable",
    re.IGNORECASE,
)
# librdkafka names a broker "host:port/id" or "proto://host:port/id" at the start of its texts
_BROKER_NAME = re.compile(r"^(?:\[thrd:[^\]]*\]:\s*)?((?:[a-z_]+://)?[^\s/:]+:\d+/[\w-]+):", re.IGNORECASE)
_SECRET = re.compile(
    r"""((?:sasl\.password|ssl\.key\.password|ssl\.keystore\.password|sasl\.oauthbearer\.client\.secret)"""
    r"""["']?\s*[=:]\s*["']?)([^"',\s}]*)""",
    re.IGNORECASE,
)
_PROPERTY = re.compile(r'(?:property\s+"([\w.]+)")|(?:\b([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+) failed\b)')


def classify_text(text: str) -> Kind:
    """The kind of one librdkafka text (an error's, or a log line's); auth and TLS before a plain
    transport failure, since librdkafka reports a failed handshake as a failed connection too."""
    if _TLS.search(text):
        return "tls"
    if _AUTH.search(text):
        return "auth"
    match = _UNREACHABLE.search(text)
    if match and match.group(1) == match.group(2):
        return "unreachable"
    if match or _BROKER.search(text):
        return "broker"
    return "other"


def classify_error(error: KafkaError) -> Kind:
    """The kind of an error handed to ``error_cb`` (or raised by a call)."""
    code = error.code()
    if code in _AUTH_CODES:
        return "auth"
    if code == KafkaError._SSL:
        return "tls"
    if code == KafkaError._ALL_BROKERS_DOWN:
        return "unreachable"
    kind = classify_text(error.str())
    if code in _BROKER_CODES:
        return kind if kind in ("tls", "auth") else "broker"
    return "other" if kind == "unreachable" else kind


def broker_of(text: str) -> str | None:
    """The broker a text is about ("localhost:9092/1"), when it names one first."""
    match = _BROKER_NAME.match(text)
    return match.group(1) if match else None


def redact(text: str) -> str:
    """``text`` with the value of every secret property replaced by ``***``."""
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


def refused_property(text: str) -> str | None:
    """The configuration property a client constructor's error names, if any
    ('No such configuration property: "foo"', 'Expected bool value for "a.b"', 'ssl.ca.location failed: ...')."""
    quoted = re.search(r'property:?\s*"([\w.]+)"', text) or re.search(r'"([a-z][\w]*(?:\.[\w]+)+)"', text)
    if quoted:
        return quoted.group(1)
    match = _PROPERTY.search(text)
    return (match.group(1) or match.group(2)) if match else None
