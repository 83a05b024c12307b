"""The EdgeFleet controller and the ``edgefleet`` CLI (docs/architecture.md has the import rules).

Rooms (sub-packages):

* ``store/``      tables (SQLModel), database engine and sessions, content-addressed blob store
* ``services/``   the domain: devices, deployments, orders, registry, datasets, captured samples, compression jobs,
                  bundle builds, telemetry, drift incidents, trust, auth, audit, the reconciler
* ``mqtt/``       embedded broker, paho bridge, decoding device messages, batched ingest
* ``api/``        REST under /api/v1: error mapping, schemas, transfer, ``routes/`` one per resource
* ``ui/``         web UI: session, render, filters, charts, pages, templates, static
* ``cli/``        the ``edgefleet`` commands, one module per group; HTTP client; serve and demo

Top-level modules:

* ``settings``    ControllerSettings (arguments, EDGEFLEET_* environment, TOML file)
* ``controller``  the composition root: one Controller owns engine, keys, stores, MQTT, loops
* ``app``         create_app(settings): the FastAPI app around a Controller
* ``server``      running the app under uvicorn (foreground or background thread)
* ``deps``        FastAPI dependencies shared by api and ui (controller, session, caller, roles)
* ``metrics``     Prometheus metrics of one controller
* ``ports``       free TCP ports
* ``background``  BackgroundLoop, the one background-loop helper (reconciler, compression worker)
* ``vocabulary``  the controller-only StrEnums (the device-facing ones: edgefleet.protocol.vocabulary)
"""
