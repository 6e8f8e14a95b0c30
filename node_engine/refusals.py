"""What a node refuses before it acts on a command: pure checks, no I/O.

A command that decodes (:func:`treeline_common.messages.decode`) can still be meaningless for a
node: a negative stage, a next hop whose endpoint is not ``tcp://host:port``, a digest that is
not a sha256. :func:`deploy_problems` and :func:`delete_problems` list what is wrong with one,
each as ``"<field>: <reason>"``; the command handler reports them as the stage's FAILED reason
(prefixed with :data:`treeline_common.errors.BAD_COMMAND`) and does nothing else.

A payload that does not decode at all is refused too; :func:`identity_of` reads from it which
stage was meant (``deployment_id``, ``stage``, ``generation`` when they are readable), so the
cluster still gets a FAILED for that stage, and :func:`unknown_fields` names keys a command
carries that this node does not know. Unknown keys are tolerated, as every wire contract here
tolerates them (:mod:`treeline_common.wire`: a newer cluster may add optional fields, and an
older node must keep working); the node logs them.

Memory (:func:`memory_refusal`): a partition needs about :data:`LOAD_MEMORY_FACTOR` times its
artifact's size once loaded and run. A node refuses one that does not fit in its offered memory
limit minus what its loaded stages already take, before downloading it.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from treeline_common import wire
from treeline_common.errors import MEMORY_LIMIT
from treeline_common.messages import DeleteCommand, DeployCommand, NextStage
from treeline_common.profiles import LOAD_MEMORY_FACTOR

MIB = 1024 * 1024
# LOAD_MEMORY_FACTOR (treeline_common.profiles, shared with the planner): resident memory of a loaded
# partition per byte of its artifact; the first session of a process adds about 20 MB more (ORT set-up).

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_TCP_ENDPOINT = re.compile(r"tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")

Identity = tuple[str, int, int]  # (deployment_id, stage, generation)
RELAY_STAGE = -1  # the index the cluster gives the relay entry on the data's source node


def deploy_problems(cmd: DeployCommand) -> list[str]:
    """Everything semantically wrong with ``cmd``, as ``"<field>: <reason>"`` ([] when sound)."""
    problems = _identity_problems(cmd.deployment_id, cmd.stage, cmd.generation)
    if cmd.stage == RELAY_STAGE and not cmd.relay:
        problems.append(f"stage: {RELAY_STAGE} is the relay entry's index, and relay is false")
    if not cmd.relay:
        if not _SHA256.fullmatch(cmd.sha256):
            problems.append("sha256: must be 64 hex digits")
        url = urlsplit(cmd.artifact_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            problems.append(f"artifact_url: must be an http(s) URL, not {cmd.artifact_url[:80]!r}")
    for what, names in (("inputs", cmd.inputs), ("outputs", cmd.outputs)):
        problems += [f"{what}[{i}]: must not be empty" for i, name in enumerate(names) if not name]
    if cmd.next is not None:
        problems += next_stage_problems(cmd.next)
    if cmd.escalate_to is not None:  # a cascade's edge stage: the same rule for its escalation route
        problems += [f"escalate_to.{p.removeprefix('next.')}" for p in next_stage_problems(cmd.escalate_to)]
    return problems


def next_stage_problems(nxt: NextStage) -> list[str]:
    """What is wrong with a route: the endpoint must be ``tcp://host:port`` with a port in 1..65535."""
    problems: list[str] = []
    match = _TCP_ENDPOINT.fullmatch(nxt.endpoint)
    if match is None or not 0 < int(match["port"]) < 65536:
        problems.append(f"next.endpoint: must be tcp://host:port, not {nxt.endpoint[:80]!r}")
    if not nxt.stage_key:
        problems.append("next.stage_key: must not be empty")
    if not nxt.node_id:
        problems.append("next.node_id: must not be empty")
    return problems


def delete_problems(cmd: DeleteCommand) -> list[str]:
    """Everything semantically wrong with a delete command ([] when sound)."""
    return _identity_problems(cmd.deployment_id, cmd.stage, cmd.generation)


def _identity_problems(deployment_id: str, stage: int | None, generation: int | None) -> list[str]:
    problems: list[str] = []
    if not deployment_id:
        problems.append("deployment_id: must not be empty")
    elif "/" in deployment_id:
        problems.append("deployment_id: must not contain '/' (stage keys are "
                        "<deployment>/<generation>/<stage>)")
    if stage is not None and stage < RELAY_STAGE:
        problems.append(f"stage: must be >= 0 (or {RELAY_STAGE}, a relay entry), not {stage}")
    if generation is not None and generation < 0:
        problems.append(f"generation: must be >= 0, not {generation}")
    return problems


def identity_of(payload: bytes | str) -> Identity | None:
    """Which stage a payload that does not decode meant: ``(deployment_id, stage, generation)``.

    None when the payload is not a JSON object or has no string ``deployment_id`` and integer
    ``stage``; a ``generation`` that is not an integer reads as 0.
    """
    try:
        body = wire.loads(payload)
    except wire.WireError:
        return None
    if not isinstance(body, dict):
        return None
    deployment_id, stage, generation = body.get("deployment_id"), body.get("stage"), body.get("generation")
    if not isinstance(deployment_id, str) or not deployment_id or not _is_int(stage):
        return None
    return deployment_id, stage, generation if _is_int(generation) else 0


def unknown_fields(cls: type[Any], payload: bytes | str) -> list[str]:
    """Top-level keys of ``payload`` that ``cls`` does not declare (``v`` is the schema version)."""
    try:
        body = wire.loads(payload)
    except wire.WireError:
        return []
    if not isinstance(body, dict):
        return []
    known = {f.name for f in fields(cls)} | {"v"}
    return sorted(str(key) for key in body if key not in known)


def _is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a bool (JSON ``true`` is no stage number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def artifact_budget(limit_bytes: int | None, used_bytes: int) -> int | None:
    """The largest artifact (bytes) that still fits: ``(limit - used) / LOAD_MEMORY_FACTOR``.

    None when the node has no limit; 0 when its stages already take all of it.
    """
    if limit_bytes is None:
        return None
    return max(0, int((limit_bytes - used_bytes) / LOAD_MEMORY_FACTOR))


def loaded_bytes(artifact_bytes: int) -> int:
    """The memory a loaded partition is charged for: its artifact's size times the factor."""
    return int(artifact_bytes * LOAD_MEMORY_FACTOR)


def memory_refusal(size: int | None, limit_bytes: int, used_bytes: int, stages: int) -> str:
    """The FAILED reason for a partition of ``size`` artifact bytes (None: larger than the budget)
    that does not fit: ``"memory limit exceeded: ..."`` with every figure in bytes, KB or MB."""
    free = max(0, limit_bytes - used_bytes)
    if size is None:
        need = f"more than {_amount(free)}"
    else:
        need = f"about {_amount(loaded_bytes(size))} ({_amount(size)} artifact × {LOAD_MEMORY_FACTOR:g})"
    return (f"{MEMORY_LIMIT}: the partition needs {need}; this node has {_amount(free)} free of its "
            f"{_amount(limit_bytes)} limit ({stages} stage(s) loaded)")


def _amount(size: int) -> str:
    if size >= MIB:
        return f"{size / MIB:.1f} MB"
    return f"{size / 1024:.1f} KB" if size >= 1024 else f"{size} bytes"
