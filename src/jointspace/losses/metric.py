"""pytorch-metric-learning losses, miners, distances and reducers by class name (the metric task)."""

from __future__ import annotations

from torch import nn

from jointspace.errors import UsageError


def _pml_class(module, name: str, field: str):
    """A class of a pytorch-metric-learning module by name; unknown names list the choices."""
    known = sorted(n for n in dir(module) if n[:1].isupper() and isinstance(getattr(module, n), type))
    if name not in known:
        raise UsageError(f"{field}: unknown {module.__name__} class {name!r}; choose from {', '.join(known)}")
    return getattr(module, name)


def _pml_build(cls, params: dict, field: str, **extra):
    """Instantiate a PML class; `extra` only fills constructor arguments the class takes and params lack."""
    import inspect

    kwargs = dict(params)
    accepted = inspect.signature(cls.__init__).parameters
    for key, value in extra.items():
        if key in accepted and key not in kwargs and value is not None:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UsageError(f"{field}: {cls.__name__}({', '.join(kwargs)}): {err}") from None


def build_metric_loss(cfg, embedding_size: int, num_classes: int) -> tuple[nn.Module, nn.Module | None]:
    """(loss, miner) from a MetricConfig: PML classes by name, sharing the distance and reducer if given.

    Classification-style losses (ArcFaceLoss, CosFaceLoss, ProxyAnchorLoss, ...) get `num_classes` and
    `embedding_size` filled in; their own parameters (class weights) must be given to the optimizer.
    """
    from pytorch_metric_learning import distances, losses, miners, reducers

    distance = None
    if cfg.distance is not None:
        distance = _pml_build(_pml_class(distances, cfg.distance.name, "metric.distance.name"),
                              cfg.distance.params, "metric.distance")
    reducer = None
    if cfg.reducer is not None:
        reducer = _pml_build(_pml_class(reducers, cfg.reducer.name, "metric.reducer.name"),
                             cfg.reducer.params, "metric.reducer")
    loss = _pml_build(_pml_class(losses, cfg.loss.name, "metric.loss.name"), cfg.loss.params, "metric.loss",
                      num_classes=num_classes, embedding_size=embedding_size, distance=distance, reducer=reducer)
    miner = None
    if cfg.miner is not None:
        miner = _pml_build(_pml_class(miners, cfg.miner.name, "metric.miner.name"), cfg.miner.params,
                           "metric.miner", distance=distance)
    return loss, miner
