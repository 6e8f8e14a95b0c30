"""The root's REST blueprints; every route is listed in :mod:`root_orchestrator.openapi`."""
