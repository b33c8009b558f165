"""The S3 adapter: the allowlist, signed GETs over curl, retries, and every S3 error translated in one place."""
