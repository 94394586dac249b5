"""Pipelines in the configuration: an entry of ``CONFIG_ENDPOINTS`` with a ``PIPELINE`` key.

``{"PIPELINE": ["decode", "model", "top_k"]}`` runs those endpoints in order, each step's
``_pre_process`` receiving what the step before's ``_post_process`` returned; the graph form
``{"PIPELINE": {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}}`` names each step's parents, runs
a step once all its parents have answered (``b`` and ``c`` at once), and gives a step of several
parents ``{parent: output}``. The steps are ordinary endpoints, each with its own model servers.
A pipeline entry starts no process and has no endpoint file: its keys are ``PIPELINE``,
``REQUEST_TIMEOUT`` (the whole flow's), ``DESCRIPTION`` and ``DISABLED``, and any other is an
error, as are a cycle, a step that is no endpoint (or is disabled, a support process or a
pipeline itself) and a graph with more than one last step. A step may be a remote endpoint
(``URLS``): its values then travel inline, over HTTP with the endpoint's token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .settings import ConfigError, Scope, expected, read

PIPELINE = "PIPELINE"
KEYS = ("PIPELINE", "REQUEST_TIMEOUT", "DESCRIPTION", "DISABLED")


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    parents: Mapping[str, tuple[str, ...]]  # step -> the steps whose outputs it takes (none: the first)
    order: tuple[str, ...]  # every step after its parents
    last: str  # the step whose answer is the pipeline's
    request_timeout: float
    description: str = ""
    disabled: bool = False


def is_pipeline(entry: Any) -> bool:
    return isinstance(entry, Mapping) and PIPELINE in entry


def parse_pipelines(raw: Mapping[str, Any], endpoints: Mapping[str, Any]) -> tuple[PipelineConfig, ...]:
    """The pipeline entries of CONFIG_ENDPOINTS (``raw``), checked against the endpoints parsed
    (``endpoints``: name -> EndpointConfig). ConfigError naming the key of the first mistake."""
    names = {name for name, entry in raw.items() if is_pipeline(entry)}
    return tuple(_parse(name, raw[name], endpoints, names) for name in raw if name in names)


def _parse(name: str, entry: Mapping[str, Any], endpoints: Mapping[str, Any], pipelines: set[str]) -> PipelineConfig:
    where = f"CONFIG_ENDPOINTS.{name}"
    extra = sorted(str(key) for key in entry if key not in KEYS)
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: a pipeline entry takes only {', '.join(KEYS)} (its steps are "
                          "configured in their own entries)")
    disabled = read(entry, "DISABLED", Scope.ENDPOINT, where)
    parents = _graph(entry[PIPELINE], f"{where}.PIPELINE")
    if len(parents) < 2:
        raise ConfigError(f"{where}.PIPELINE: expected at least two steps (one is its endpoint: call it by its "
                          "own name)")
    for step in parents:
        _check_step(step, endpoints, pipelines, f"{where}.PIPELINE", disabled)
    order = _ordered(parents, f"{where}.PIPELINE")
    children = {parent for step in parents for parent in parents[step]}
    last = [step for step in order if step not in children]
    if len(last) != 1:
        raise ConfigError(f"{where}.PIPELINE: expected one last step (whose answer is the pipeline's), found "
                          f"{len(last)}: {', '.join(last)}")
    return PipelineConfig(name, parents, order, last[0], read(entry, "REQUEST_TIMEOUT", Scope.ENDPOINT, where),
                          read(entry, "DESCRIPTION", Scope.ENDPOINT, where), disabled)


def _graph(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    """Step -> its parents, from the list form or the graph form."""
    if isinstance(value, list):
        if not value or not all(isinstance(step, str) and step for step in value):
            raise ConfigError(expected(where, "a list of endpoint names (or an object of step -> its parents)", value))
        twice = sorted({step for step in value if value.count(step) > 1})
        if twice:
            raise ConfigError(f"{where}: {twice[0]!r} appears twice (the graph form names each step once)")
        return {step: ((value[n - 1],) if n else ()) for n, step in enumerate(value)}
    if isinstance(value, Mapping) and value:
        graph = {}
        for step, parents in value.items():
            if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
                raise ConfigError(expected(f"{where}.{step}", "a list of the steps it takes the outputs of", parents))
            unknown = [p for p in parents if p not in value]
            if unknown:
                raise ConfigError(f"{where}.{step}: {unknown[0]!r} is not a step of this pipeline")
            graph[step] = tuple(dict.fromkeys(parents))
        return graph
    raise ConfigError(expected(where, "a list of endpoint names, or an object of step -> its parents", value))


def _check_step(step: str, endpoints: Mapping[str, Any], pipelines: set[str], where: str, disabled: bool) -> None:
    if step in pipelines:
        raise ConfigError(f"{where}: step {step!r} is a pipeline itself (list its steps instead)")
    endpoint = endpoints.get(step)
    if endpoint is None:
        raise ConfigError(f"{where}: step {step!r} is no endpoint of CONFIG_ENDPOINTS")
    if endpoint.is_support:
        raise ConfigError(f"{where}: step {step!r} is a support process (HOST \"NO_HOST\"), not a model server")
    if endpoint.disabled and not disabled:
        raise ConfigError(f"{where}: step {step!r} is disabled (DISABLED): the pipeline could never run")


def _ordered(parents: Mapping[str, tuple[str, ...]], where: str) -> tuple[str, ...]:
    """The steps, each after its parents (Kahn's order, stable); ConfigError for a cycle."""
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(parents):
        ready = [step for step in parents if step not in done and all(p in done for p in parents[step])]
        if not ready:
            left = [step for step in parents if step not in done]
            raise ConfigError(f"{where}: the steps {', '.join(left)} depend on each other (a cycle)")
        order += ready
        done.update(ready)
    return tuple(order)
