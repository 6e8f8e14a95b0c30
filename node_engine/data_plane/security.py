"""Who may send to a stage: the access rule a node applies before it admits a request.

The cluster gives every stage of one deployment generation the same secret **data key**
(``DeployCommand.data_key``, 32 random-looking bytes as hex; see
:func:`cluster_orchestrator.planning.data_key`). A stage signs every request it forwards
with it (:func:`treeline_common.tensor_wire.pack` with ``key``) and the next stage checks
the authenticator, so only stages of the same deployment and generation can feed a stage.

The rule, for a stage deployed with a data key (``StageAccess.from_command``):

- a request with an authenticator is admitted iff it verifies under the data key, or, at
  the **entry** stage (where callers send requests), under the deployment's **caller key**;
  a wrong authenticator is never admitted, even where unsigned requests are;
- a request without an authenticator is admitted only at the entry stage of a deployment
  whose SLA does not ask for privacy (no caller key): callers of an open service need no
  key, inner stages always do;
- an **encrypted** deployment's inner stages (``privacy.encrypt_tensors``) admit requests
  only when they arrived on the node's CURVE socket; the entry accepts callers on either
  socket (a caller that knows the entry's CURVE key may use it).

Everything else is refused with code :data:`~treeline_common.tensor_wire.UNAUTHORIZED`, before
the request reaches the ledger: an unauthenticated peer cannot attach to a request in
flight or read a stored reply. A stage deployed without a data key (a cluster that has no
secret configured) admits everything, as before authentication existed.

Replay: an authenticator stays valid for its message, and the ledger answers a repeated id
from its store; that gives an on-path observer nothing it has not seen already, and on an
encrypted deployment there is no such observer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treeline_common.messages import DeployCommand
from treeline_common.tensor_wire import TensorHeader, signed_by


def key_bytes(hex_key: str) -> bytes:
    """The raw bytes of a hex key as commands carry it (b"" for ""); ValueError if not hex."""
    return bytes.fromhex(hex_key) if hex_key else b""


@dataclass(frozen=True)
class StageAccess:
    """The access rule of one stage (see the module docstring); the default admits everything."""

    data_key: bytes = b""  # b"": authentication off for this stage
    caller_key: bytes = b""  # entry only: callers must sign with it; b"": callers need no key
    entry: bool = False  # callers send here
    encrypted: bool = False  # inner stages: requests must arrive over CURVE

    @classmethod
    def from_command(cls, cmd: DeployCommand) -> StageAccess:
        return cls(data_key=key_bytes(cmd.data_key), caller_key=key_bytes(cmd.caller_key), entry=cmd.entry,
                   encrypted=cmd.encrypt_tensors)

    @property
    def signing_key(self) -> bytes:
        """The key forwards from this stage are signed with (b"": sent unsigned)."""
        return self.data_key

    def refusal(self, header: TensorHeader, tensor_frames: Sequence[Any], over_curve: bool) -> str:
        """Why this request may not enter the stage ("" when it may)."""
        if not self.data_key:
            return ""
        if self.encrypted and not self.entry and not over_curve:
            return (f"stage {header.stage} takes encrypted requests only: send to the node's CURVE "
                    "endpoint")
        if header.auth:
            keys = [self.data_key, *([self.caller_key] if self.entry and self.caller_key else [])]
            if signed_by(header, tensor_frames, keys):
                return ""
            return f"request {header.request_id} to stage {header.stage}: authenticator does not verify"
        if self.entry and not self.caller_key:
            return ""
        who = "callers of this service must sign requests with its caller key" if self.entry \
            else "only stages of the same deployment may send here"
        return f"request {header.request_id} to stage {header.stage} is not signed: {who}"


OPEN = StageAccess()
