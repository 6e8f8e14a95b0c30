"""Treeline's root orchestrator: model registry, applications/services, cluster registry and
ranking.

The Flask app (:mod:`root_orchestrator.app`) is a thin edge over the stores
(:mod:`root_orchestrator.stores`, chosen by URI) and a
:class:`~root_orchestrator.cluster_client.ClusterClient` that hides the HTTP calls to cluster
orchestrators, so tests inject fakes for both.
"""
