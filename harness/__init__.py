"""Test harness: a real Apache Kafka broker and a real (moto) S3 endpoint, without Docker.

Mocks of Kafka hide exactly what the worker has to get right (rebalances, offset commits, transactions,
a broker that goes away and comes back), so tests talk to real servers over real sockets instead.
Import from the modules (``harness.kafka_broker``, ``harness.s3_server``); this package imports nothing,
so that ``python -m harness.kafka_broker`` runs cleanly.
"""
