"""Layer groups of a tower, bottom to top, and what a tower config does with them.

A tower that supports partial unlocking and layer-wise learning-rate decay has a method
`layer_groups() -> list[list[(name, parameter)]]` that follows its library's own layer structure
(open_clip's `lock()` groups, timm's `group_matcher`, a Hugging Face model's layer list...), every
parameter of the tower in exactly one group. With it:
- `unlocked_groups: N` trains the last N groups only (`unlock_last`); `freeze_norms` also keeps the
  norm layers of the locked part in eval mode (`locked_norms`, kept by `keep_norms_eval`);
- `layer_decay: d` scales the learning rate of group i of G by d ** (G - 1 - i) (`layer_scales`); the
  optimizer reads the scales of every tower through `parameter_lr_scales`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from jointspace.errors import UsageError

NamedParams = list[tuple[str, nn.Parameter]]
LayerGroups = list[NamedParams]
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
LR_SCALES = "lr_scales"  # tower attribute: {parameter name in the tower: learning-rate scale}
EVAL_NORMS = "eval_norms"  # tower attribute: names of the norm layers kept in eval mode


def tower_groups(tower: nn.Module, tower_name: str) -> LayerGroups:
    """The tower's layer groups (empty ones dropped); fails naming a tower that has none."""
    fn = getattr(tower, "layer_groups", None)
    if fn is None:
        raise UsageError(f"tower {tower_name!r} has no layer groups: unlocked_groups and layer_decay work with "
                         "open_clip, timm (vit), Hugging Face and efficientnet_lite0 towers")
    groups = [g for g in fn() if g]
    names = [n for g in groups for n, _ in g]
    own = [n for n, _ in tower.named_parameters()]
    if sorted(names) != sorted(own):  # a tower's grouping that misses or repeats a parameter is a bug
        raise RuntimeError(f"tower {tower_name!r}: layer groups do not cover each parameter once: "
                           f"{sorted(set(own) ^ set(names))[:5] or 'repeated names'}")
    return groups


def unlock_last(groups: LayerGroups, n: int) -> None:
    """Only the parameters of the last `n` groups train (all of them when n >= the number of groups)."""
    first = len(groups) - n
    for i, group in enumerate(groups):
        for _, p in group:
            p.requires_grad_(i >= first)


def locked_norms(tower: nn.Module, groups: LayerGroups, n: int) -> list[str]:
    """Names of the tower's norm layers whose parameters all lie in the groups before the last `n`."""
    locked = {id(p) for group in groups[:max(len(groups) - n, 0)] for _, p in group}
    found = []
    for name, module in tower.named_modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, NORMS) and own and all(id(p) in locked for p in own):
            found.append(name)
    return found


def layer_scales(groups: LayerGroups, decay: float) -> dict[str, float]:
    """{parameter name: decay ** depth}, depth 0 for the top group, 1 for the one below it, ..."""
    top = len(groups) - 1
    return {name: decay ** (top - i) for i, group in enumerate(groups) for name, _ in group}


def keep_norms_eval(model: nn.Module) -> None:
    """Put the norm layers that towers list under `eval_norms` back in eval mode (after `model.train()`)."""
    for module in model.modules():
        for name in getattr(module, EVAL_NORMS, ()):
            module.get_submodule(name).eval()


def parameter_lr_scales(model: nn.Module) -> dict[int, float]:
    """{id(parameter): learning-rate scale} from every tower of `model` with layer decay (others: none)."""
    scales: dict[int, float] = {}
    for module in model.modules():
        own = getattr(module, LR_SCALES, None)
        if own:
            scales.update({id(p): own[n] for n, p in module.named_parameters() if n in own})
    return scales


def groups_from_lock(tower: nn.Module, lock: Callable[[int], None]) -> LayerGroups:
    """The groups a library's `lock(n)` leaves trainable, read off by calling it for n = 1, 2, ... until one
    more unlocks nothing new (group i from the top = what lock(i) unlocks beyond lock(i - 1)). Parameters
    that no n unlocks join the top group. The tower's requires_grad flags are restored afterwards."""
    params = list(tower.named_parameters())
    flags = [p.requires_grad for _, p in params]
    groups: LayerGroups = []
    unlocked: set[str] = set()
    try:
        for n in range(1, len(params) + 2):
            for _, p in params:
                p.requires_grad_(True)  # lock() freezes what it locks; what it never touches stays trainable
            lock(n)
            now = {name for name, p in params if p.requires_grad}
            if now == unlocked:
                break
            groups.insert(0, [(name, p) for name, p in params if name in now - unlocked])
            unlocked = now
    finally:
        for (_, p), flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    if groups:
        groups[-1] += [(name, p) for name, p in params if name not in unlocked]
    return groups


def groups_around(tower: nn.Module, blocks: list[list[str]]) -> LayerGroups:
    """Groups of a tower whose middle is a list of blocks (`blocks`: each group's submodule names): the
    parameters registered before the first block (embeddings, stem), each group of blocks, and those
    registered after (final norm, pooler, head)."""
    owner = {prefix: i for i, names in enumerate(blocks) for prefix in names}
    stem: NamedParams = []
    middle: LayerGroups = [[] for _ in blocks]
    top: NamedParams = []
    for name, p in tower.named_parameters():
        parts = name.split(".")
        i = next((owner[".".join(parts[:k])] for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in owner),
                 None)
        if i is not None:
            middle[i].append((name, p))
        else:
            (top if any(middle) else stem).append((name, p))
    return [stem, *middle, top]


def largest_layer_list(module: nn.Module) -> str:
    """Name of the `nn.ModuleList` with the most parameters (a transformer's layer list)."""
    lists = [(sum(p.numel() for p in m.parameters()), name) for name, m in module.named_modules()
             if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise UsageError(f"{type(module).__name__} has no layer list to group")
    return max(lists)[1]


def layer_list_groups(tower: nn.Module) -> LayerGroups:
    """Embeddings, each entry of the tower's layer list (its largest `nn.ModuleList`, e.g. a Hugging Face
    model's `encoder.layer`), then what follows it (final norm, pooler)."""
    name = largest_layer_list(tower)
    return groups_around(tower, [[f"{name}.{i}"] for i in range(len(tower.get_submodule(name)))])


def tune_groups(tower: nn.Module, tower_name: str, unlocked_groups: int | None, freeze_norms: bool,
                layer_decay: float | None) -> None:
    """Apply a tower config's `unlocked_groups` (with `freeze_norms`) and `layer_decay`, in place."""
    if unlocked_groups is None and layer_decay is None:
        return
    groups = tower_groups(tower, tower_name)
    if unlocked_groups is not None:
        unlock_last(groups, unlocked_groups)
        if freeze_norms:
            setattr(tower, EVAL_NORMS, locked_norms(tower, groups, unlocked_groups))
    if layer_decay is not None:
        setattr(tower, LR_SCALES, layer_scales(groups, layer_decay))
