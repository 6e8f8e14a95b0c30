"""The node-to-node tensor data plane.

Node side: :mod:`.server` (one ROUTER per node), :mod:`.ledger` (requests in flight and
recent replies, so a retried request id is answered once), :mod:`.downstream` (links to
later stages, failing fast), :mod:`.forwarding` (forwards and the emulated uplink).
Caller side: :mod:`.client` (one node, low level), :mod:`.service_client` (a service:
resolve its entry, retry with the same request id, one answer or one error by a deadline)
over :mod:`.entry` (the monitored connection to the entry node).
"""
