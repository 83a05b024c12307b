"""Drift incidents (docs/incidents.md): :mod:`rule`, the pure K-window rule over one cohort's windows;
:mod:`service`, the idempotent pass over stored telemetry that applies it, and reading and closing."""
