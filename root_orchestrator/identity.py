"""Who answers: the root's process identity, for ``GET /api/health``
(the body itself: :func:`treeline_common.health.health_body`).

``PROCESS_INSTANCE_ID`` is made once when the process imports this module (in practice at
start-up, before the server listens) and never changes while it runs; a restart makes a new one.
"""

from __future__ import annotations

import uuid

PROCESS_INSTANCE_ID = str(uuid.uuid4())
SERVICE_NAME = "root"
