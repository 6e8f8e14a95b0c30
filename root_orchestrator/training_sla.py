"""The root's checks of ``ml-training`` services: their ``training`` block and their starting model.

A training job starts from a registry version at once (there is nothing to wait for, unlike an
``ml-model`` service applied before its model is uploaded), so a starting model that does not
resolve for the applying user is the SLA's fault: :func:`check_training_models` refuses the whole
SLA *before anything is written* (``POST /api/application/``, ``POST /api/apply``, ``POST
/api/plan``), naming ``applications[i].microservices[j].training.model``. The instance route
names ``training.model`` (relative to the service, as ``model.name`` is for an ``ml-model``
service) through :func:`training_model_error`.

A starting model that resolves but is not one the Flower client can train (its registered
signature is not the digits MLP's, :mod:`treeline_common.trainable`) is refused on the same routes,
before any write, with 400 naming ``...training.model`` (:func:`untrainable_error`): it would
otherwise fail only at run time, on the nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deployment_descriptors import Sla
from treeline_common.errors import InvalidInput, NotFound, TreelineError
from treeline_common.trainable import TRAINABLE_BUILTIN, untrainable_reason
from treeline_common.training import TRAINING_VIRTUALIZATION, TrainingError, TrainingSpec

MODEL_PATH = "training.model"

Resolver = Callable[[dict[str, Any], str | None], dict[str, Any]]


def training_spec_of(service: dict[str, Any]) -> TrainingSpec:
    """The training block of an ``ml-training`` service doc (its SLA block is under
    ``microservice``) or of an SLA microservice itself; InvalidInput naming ``training.<field>``."""
    inner = service.get("microservice")
    try:
        return TrainingSpec.from_sla((inner if isinstance(inner, dict) else service).get("training"))
    except TrainingError as exc:
        path = f"training.{exc.path}" if exc.path else "training"
        raise InvalidInput(f"invalid training block: {path}: {exc.message}",
                           [{"path": path, "message": exc.message}]) from None


def training_model_error(exc: TreelineError, spec: TrainingSpec, prefix: str = "") -> TreelineError:
    """``exc`` (a registry lookup's NotFound naming ``model.name``/``model.version``) re-addressed to
    the SLA field that named the model, ``<prefix>training.model``; the same error class."""
    ref = f"{spec.model_name}:{spec.model_version}"
    reason = exc.details[0].get("message") if exc.details else exc.message
    message = f"starting model {ref} cannot be used: {reason}"
    path = f"{prefix}{MODEL_PATH}"
    return type(exc)(f"{path}: {message}", [{"path": path, "message": message}])


def untrainable_problem(version: dict[str, Any], path: str = MODEL_PATH) -> dict[str, Any] | None:
    """``{path, message}`` when registry ``version`` (with its ``signature``) is not a model the
    Flower client can train; None when it is."""
    reason = untrainable_reason(version.get("signature"))
    if not reason:
        return None
    return {"path": path, "message": f"{version.get('name')}:{version.get('version')} is not a model the "
                                     f"Flower client can train: {reason} (the digits MLP: treeline model "
                                     f"register --builtin {TRAINABLE_BUILTIN})"}


def check_training_models(sla: Sla, resolve: Resolver) -> None:
    """NotFound naming every ``ml-training`` microservice of ``sla`` whose starting model does not
    resolve for ``sla.customer_id`` (``resolve(microservice, owner)`` is
    :meth:`~root_orchestrator.instances.InstanceManager.resolve_model`); else InvalidInput (400)
    naming every one whose starting model the Flower client cannot train
    (:func:`untrainable_problem`); nothing when all are fine.

    Called before any write, so a refused SLA leaves nothing behind. Other errors of the
    resolver (a bad training block: InvalidInput) propagate with their paths prefixed.
    """
    problems: list[dict[str, Any]] = []
    untrainable: list[dict[str, Any]] = []
    for a_index, app in enumerate(sla.applications):
        for m_index, ms in enumerate(app.microservices):
            if ms.virtualization != TRAINING_VIRTUALIZATION:
                continue
            prefix = f"applications[{a_index}].microservices[{m_index}]."
            try:
                version = resolve(ms.raw, sla.customer_id)
                problem = untrainable_problem(version, prefix + MODEL_PATH)
                untrainable += [problem] if problem else []
            except NotFound as exc:
                problems += [dict(d, path=prefix + str(d.get("path"))) for d in exc.details] or [
                    {"path": prefix + MODEL_PATH, "message": exc.message}]
            except InvalidInput as exc:
                raise InvalidInput(exc.message, [dict(d, path=prefix + str(d.get("path")))
                                                 for d in exc.details]) from None
    if problems:
        first = problems[0]
        raise NotFound(f"{first['path']}: {first['message']}", problems)
    if untrainable:
        first = untrainable[0]
        raise InvalidInput("starting model cannot be trained", untrainable)  # the CLI shows path: message
