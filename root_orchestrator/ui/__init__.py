"""The operator web UI's static files (served by :mod:`root_orchestrator.api.ui`)."""
