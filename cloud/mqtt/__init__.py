"""The controller's MQTT side: the embedded broker (:mod:`broker`), the paho bridge (:mod:`bridge`),
decoding raw device messages (:mod:`decoding`) and storing them in batches (:mod:`ingest`)."""
