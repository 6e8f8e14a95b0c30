"""``Status``: the outcome of one plugin for one node, with a closed set of codes.

Why a closed set (kube-scheduler's ``framework.Code``): the runner and the operator must know
what to do with every outcome without parsing strings. ``reasons`` are human words; the
machine-readable part is ``code`` plus the plugin's reason-code constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from treeline_common.errors import TreelineError


class Code(StrEnum):
    """What a plugin's outcome means for scheduling.

    ``SUCCESS``: the node passed. ``UNSCHEDULABLE``: the node fails now but may pass later
    (offline, battery low, busy); retrying the request later can help.
    ``UNSCHEDULABLE_AND_UNRESOLVABLE``: the node can never serve this request as written
    (wrong arch, too little memory, not named by a ``direct`` constraint); only a changed
    SLA or cluster helps. ``ERROR``: the plugin itself failed; the cycle is aborted.
    """

    SUCCESS = "success"
    UNSCHEDULABLE = "unschedulable"
    UNSCHEDULABLE_AND_UNRESOLVABLE = "unschedulable_and_unresolvable"
    ERROR = "error"


@dataclass(frozen=True)
class Status:
    """A ``Code``, the reasons behind it and the plugin that produced it."""

    code: Code = Code.SUCCESS
    reasons: tuple[str, ...] = ()
    plugin: str = ""

    @property
    def is_success(self) -> bool:
        return self.code is Code.SUCCESS

    @property
    def reason(self) -> str:
        """All reasons joined, for one-line logs and messages."""
        return "; ".join(self.reasons)

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code.value, "reasons": list(self.reasons), "plugin": self.plugin}


class PluginError(TreelineError):
    """A plugin broke its contract (raised, or returned a malformed mask/score array).

    Carries a ``Status`` with ``Code.ERROR`` naming the plugin, so the failure is attributed
    rather than showing up as a bare traceback from numpy.
    """

    code = "INTERNAL_ERROR"

    def __init__(self, status: Status) -> None:
        super().__init__(f"scheduler plugin {status.plugin!r} failed: {status.reason}",
                         [{"plugin": status.plugin, "message": status.reason}])
        self.status = status
