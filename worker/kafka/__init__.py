"""The Kafka adapter shared by the stream and the tools: client configurations, and the one boundary where
librdkafka's errors become the worker's.
"""
