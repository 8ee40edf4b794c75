"""The edge: capture -> decode -> sampling gate -> Kafka (the same gate as `rstscope analyze`)."""
