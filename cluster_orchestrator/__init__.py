"""Treeline's cluster orchestrator: node registry, liveness, ML placement apply, root push.

Modules: ``store`` (state behind an interface), ``nodes`` / ``liveness`` (registration and
failure detection), ``planning`` / ``deployer`` / ``deployments`` (decide, then commit),
``mqtt_bus`` (the only paho user), ``root_client``, ``api`` (Flask), ``app`` (process wiring).
"""
