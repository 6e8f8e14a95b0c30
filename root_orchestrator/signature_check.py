"""The SLA's declared model inputs against the registered model's signature, at apply time.

The cluster checks every job on arrival (``microservice.model.inputs[i]...``); checking at the
root too lets ``treeline apply`` refuse the file before anything is stored, with paths into the
SLA (``applications[0].microservices[1].model.inputs[1].dtype: model expects int64, SLA says
float32``). The comparison itself is :func:`deployment_descriptors.signature_problems`, the one
the cluster runs, on the version's stored ``signature`` (:mod:`.onnx_signature`).

A model that does not resolve (no such name or version yet, or one the applying user may not
use) is not checked here: applying an SLA before uploading its model is allowed, and the
deployment reports the missing model. Reading the stored signature is one registry lookup per
ML microservice that declares inputs; no artifact is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from deployment_descriptors import Sla, signature_problems
from root_orchestrator.stores.base import ModelRegistry
from treeline_common.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)


def input_problems(sla: Sla, models: ModelRegistry, may_use: Callable[[str], bool]) -> list[dict[str, str]]:
    """Every declared-input mismatch of ``sla``'s ML microservices, with SLA paths.

    ``may_use(model_owner)`` says whether the applying user may deploy a model of that owner;
    models it may not use are skipped (their signature is not the caller's to see).
    """
    problems: list[dict[str, str]] = []
    for a_index, app in enumerate(sla.applications):
        for m_index, ms in enumerate(app.microservices):
            spec = ms.model
            if spec is None or not spec.inputs:
                continue
            try:
                version: dict[str, Any] = models.get_version(spec.name, spec.version)
            except NotFound:
                continue
            if not may_use(str(version.get("owner") or "")):
                continue
            prefix = f"applications[{a_index}].microservices[{m_index}]."
            found = signature_problems(spec.inputs, spec.inputs_key, version.get("signature"))
            problems += [dict(p, path=prefix + p["path"]) for p in found]
            if found:
                log.info("apply refused: %s of %s does not match model %s v%s", spec.inputs_key, ms.name,
                         spec.name, version.get("version"))
    return problems


def check_inputs(sla: Sla, models: ModelRegistry, may_use: Callable[[str], bool]) -> None:
    """InvalidInput (400) naming each mismatch of :func:`input_problems`; nothing when none."""
    problems = input_problems(sla, models, may_use)
    if problems:
        raise InvalidInput("the SLA's model inputs do not match the registered models", problems)
