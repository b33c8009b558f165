"""What crosses the wire: input messages, the output Avro record, Schema Registry framing, record positions."""
