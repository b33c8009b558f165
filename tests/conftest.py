"""Fixtures shared by the suite. The real Kafka broker and S3 endpoint come from harness.pytest_plugin."""

from __future__ import annotations

pytest_plugins = ["harness.pytest_plugin"]
