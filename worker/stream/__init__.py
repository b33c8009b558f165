"""The Kafka driver: the main loop, offsets, delivery (acked or transactional), rebalances, dead letters,
outages, replay.
"""
