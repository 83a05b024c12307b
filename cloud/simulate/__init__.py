"""A fleet simulator over real sockets: N simulated devices on one asyncio loop, each its own MQTT
connection with its own credentials and message key, speaking the real protocol to a real controller
(enrollment over REST, hello, heartbeats, telemetry windows, signed orders, HTTP Range downloads,
status reports). ``edgefleet simulate`` and ``benchmarks/fleet.py`` drive it; the rollout tests use it.

Nothing of the controller's runtime imports this room (tests/test_import_rules.py): it talks to a
controller only over HTTP and MQTT, like a device.

* :mod:`.knobs` -- what a run is told (typed settings).
* :mod:`.device` -- one device as a pure model: the update state machine as a table, the messages.
* :mod:`.telemetry` -- statistics windows with realistic histograms and drift.
* :mod:`.credentials` -- enrollment of many devices at once, kept in a state file.
* :mod:`.mqtt` -- paho clients driven by the asyncio loop (no thread per connection).
* :mod:`.fleet` -- the run: connections, schedules, orders, downloads, churn, storms, the report.
"""
