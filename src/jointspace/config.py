"""Typed run configuration: YAML in, `--set key=value` overrides, errors that name the field."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from jointspace.errors import JointspaceError, UsageError
from jointspace.kinds import size_fields
from jointspace.losses.registry import loss_class, loss_params
from jointspace.preemption import signal_number

M = TypeVar("M", bound=BaseModel)


class ConfigError(UsageError):
    """A configuration file or override is wrong; the message names the field."""


class RunsFailed(JointspaceError, RuntimeError):
    """Some runs of a grid failed (the others finished and were tabulated); the message names each."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def renamed_key(raw: Any, old: str, new: str, section: str) -> Any:
    """A config section as written before its key `old` was named `new` (config files, run folders'
    config.yaml): read as `new`, with a one-line FutureWarning; both keys at once is an error naming them."""
    if not isinstance(raw, dict) or old not in raw:
        return raw
    if new in raw:
        raise UsageError(f"{section}.{old} is the former name of {section}.{new}: give only {section}.{new}")
    warnings.warn(f"{section}.{old} is now called {section}.{new} (the old name is still read)", FutureWarning,
                  stacklevel=2)
    return {(new if k == old else k): v for k, v in raw.items()}


class SourceConfig(_Strict):
    """One shard folder (or foreign WebDataset shard URLs, read with data.keys) mixed into the train
    split; `weight` upsamples it (with data.resampled)."""

    path: str
    weight: float = Field(1.0, gt=0.0)


class _DataHead(_Strict):
    path: str = "data/digits"
    synth: Literal["digits", "shapes", "moving"] | None = None  # generate this built-in set if `path` is missing
    synth_size: int | None = None  # samples to synthesise (None: the generator's default)
    modalities: list[str] = Field(default_factory=lambda: ["image", "text", "audio"])
    label_key: str = "label"


# every registered kind's size fields (`Kind.sizes`: data.image_size, data.context_length...), each an int
# of at least its minimum; they follow data.label_key, and become the run's Prep sizes (`runs.config_prep`)
_DataSizes = create_model("_DataSizes", __base__=_DataHead, __module__=__name__, **{
    name: (int, Field(size.default, ge=size.minimum, description=size.doc)) for name, size in size_fields().items()})


class DataConfig(_DataSizes):
    max_range: float | None = Field(None, gt=0.0)  # range images / point clouds: metres that map to 1
    # (None: dataset.json's `max_range`, else the train split's largest range; recorded in run.json)
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    label_map: dict[str, str] = Field(default_factory=dict)  # {old class name: new class name}: merge classes
    sources: list[SourceConfig] = Field(default_factory=list)  # train split from several shard folders
    resampled: bool = False  # draw each epoch's samples with replacement, P ∝ source weight x size
    samples_per_epoch: int | None = Field(None, ge=1)  # with resampled (default: all sources' sizes summed)
    streaming: bool = False  # read the train split shard by shard instead of decoding it into memory
    num_workers: int = Field(0, ge=0)  # DataLoader workers of the streaming path
    shuffle_buffer: int = Field(1000, ge=0)  # streaming: samples shuffled within a buffer of this size
    # foreign WebDataset shards (img2dataset / open_clip_train layout, no dataset.json) instead of data.path:
    urls: str | list[str] | None = None  # train shards: brace patterns, lists, `a::b`, pipe:, paths, folders
    val_urls: str | list[str] | None = None
    test_urls: str | list[str] | None = None
    keys: dict[str, str] = Field(default_factory=dict)  # modality -> members, e.g. {image: "jpg;png;webp"}
    kinds: dict[str, str] = Field(default_factory=dict)  # modality -> kind (default: by its first member)
    class_names: list[str] = Field(default_factory=list)  # default: class folders' or json labels' names
    label_from: Literal["auto", "cls", "json", "folder", "none"] = "auto"  # json: the field data.label_key
    # open_clip-style CSV datasets (--dataset-type csv), read without packing, image paths relative to the CSV:
    csv: str | None = None  # train CSV/TSV
    val_csv: str | None = None
    test_csv: str | None = None
    csv_img_key: str = "filepath"  # open_clip's --csv-img-key
    csv_caption_key: str = "title"  # --csv-caption-key
    csv_separator: str = "\t"  # --csv-separator

    def prep_sizes(self) -> dict[str, int]:
        """The registered kinds' size fields as set here (defaults filled in)."""
        return {name: getattr(self, name) for name in size_fields()}

    @model_validator(mode="after")
    def _foreign_modalities(self) -> DataConfig:
        """With data.urls, the modalities default to data.keys' (open_clip's image + text)."""
        if (self.urls or self.csv) and "modalities" not in self.model_fields_set:
            object.__setattr__(self, "modalities", list(self.keys or {"image": 0, "text": 0}))
        return self

    @model_validator(mode="after")
    def _weights_need_resampling(self) -> DataConfig:
        if not self.resampled and any(s.weight != 1.0 for s in self.sources):
            raise UsageError("data.sources weights other than 1 need data.resampled: true")
        return self


class LoraSettings(_Strict):
    """LoRA adapters (peft) on a tower: rank, scale alpha/r, and module-name suffixes to adapt."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | None = None  # default: the tower's attention output projections


class TowerConfig(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    freeze: bool = False  # locked tower (LiT): no parameter of it trains; only its head does
    lora: LoraSettings | None = None  # adapters train, the tower's own weights stay frozen
    grad_checkpointing: bool = False  # recompute activations in backward (less memory, more compute)
    init_from: str | None = None  # "runs/x#image[@fingerprint]": start from that finished run's tower


class HeadConfig(_Strict):
    type: Literal["linear", "mlp", "none"] = "linear"  # none: the tower's output as is (embed_dim = its width)
    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _former_kind(cls, raw: Any) -> Any:
        return renamed_key(raw, "kind", "type", "model.head")  # "kind" now means a data kind only


class ModelConfig(_Strict):
    init_from: str | None = None  # a finished contrastive run: its towers (and heads where shapes match)
    embed_dim: int = Field(64, ge=1)
    towers: dict[str, TowerConfig] = Field(default_factory=dict)
    head: HeadConfig = Field(default_factory=HeadConfig)
    init_temperature: float = Field(0.07, gt=0.0)
    learn_temperature: bool = True
    max_logit_scale: float = Field(100.0, gt=0.0)
    dedupe_inputs: bool = True  # identical inputs of a batch encoded once (towers without BatchNorm / dropout)


class LossConfig(_Strict):
    name: str = "infonce"  # a registered loss (jointspace.losses.LOSSES)
    params: dict[str, Any] = Field(default_factory=dict)  # the loss's own settings, checked by its Params
    positives: Literal["instance", "label", "caption"] = "label"
    anchor: str | None = None  # ImageBind-style: bind every other modality to this one
    pairs: list[tuple[str, str]] | None = None  # explicit pairs; default: anchor pairs or all pairs
    weights: dict[str, float] = Field(default_factory=dict)  # "a-b" or modality name -> weight

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        loss_class(v)
        return v

    @model_validator(mode="after")
    def _params_fit_the_loss(self) -> LossConfig:
        loss_params(self.name, self.params)
        return self


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=2)
    accum_steps: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float | None = 1.0
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    device: str = "auto"
    num_threads: int | None = None
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(1, ge=1)  # epochs
    checkpoint_every: int = Field(1, ge=1)  # epochs
    keep_checkpoints: int = Field(2, ge=1)
    checkpoint_every_steps: int | None = Field(None, ge=1)  # also checkpoint mid-epoch (exact resume)
    local_loss: bool = False  # data parallel: score local anchors against the gathered batch (open_clip)
    compile: bool = False  # torch.compile the forward pass
    channels_last: bool = False  # NHWC memory format for the convolutions
    # signals that stop the run at the next step with a checkpoint (clusters and spot machines send them)
    preempt_signals: list[str] = Field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])

    @field_validator("preempt_signals")
    @classmethod
    def _catchable(cls, v: list[str]) -> list[str]:
        for name in v:
            signal_number(name)
        return v


class EvalConfig(_Strict):
    split: str = "test"
    positives: Literal["label", "instance"] = "label"  # class-level (CLIP_benchmark) or same-sample hits
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    map_k: int = 10
    chunk_size: int = Field(1024, ge=1)
    zero_shot: bool = True
    zero_shot_prompts: str | None = None  # a YAML/JSON file {class: [prompt, ...]} (default: the data's own)
    linear_probe: bool = True


class IndexConfig(_Strict):
    """Defaults of `jointspace index build RUN` for this run's index (its flags override them)."""

    factory: str = "auto"  # 'auto' (exact below 50k vectors, IVF above) or a FAISS factory string
    nprobe: int | None = Field(None, ge=1)  # IVF lists searched per query (None: nlist/256, at least 8)
    splits: list[str] = Field(default_factory=list)  # splits to index (empty: all)
    modalities: list[str] = Field(default_factory=list)  # modalities to index (empty: all the model has)
    batch_size: int = Field(256, ge=1)


def plain_folder_name(v: str) -> str:
    """A run or variant name becomes a folder: no path separators, not hidden, not empty."""
    if not v or "/" in v or v.startswith("."):
        raise UsageError("must be a plain folder name")
    return v


class RunFolder(_Strict):
    """What every kind of run has: a name (its folder under `output_dir`) and a seed."""

    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return plain_folder_name(v)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# Sections RunConfig held for every task before each task declared its own. Every run folder written then
# has all of them in its config.yaml (and a config naming its task could carry another task's, unread), so
# a config whose type lacks one ignores it, as before. Newer task sections are not listed: they are errors.
FORMER_SECTIONS = ("fusion", "metric", "cilp")


class RunConfig(RunFolder):
    """The sections every task's run config has; a task whose runs need more subclasses it with its own
    section (tasks/: `task:` picks the type)."""

    task: str = "contrastive"  # a registered task (jointspace.tasks; checked there, where `task:` picks the type)
    tracker: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)

    @model_validator(mode="before")
    @classmethod
    def _former_sections(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and any(k in raw and k not in cls.model_fields for k in FORMER_SECTIONS):
            return {k: v for k, v in raw.items() if k not in FORMER_SECTIONS or k in cls.model_fields}
        return raw


class VariantConfig(_Strict):
    """One named variant of a comparison grid: overrides of the base config (dotted key -> value)."""

    name: str
    task: str | None = None  # a registered task (checked by compare); default: the grid's
    set: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return plain_folder_name(v)


class GridConfig(_Strict):
    """`jointspace compare`: base config x variants x seeds."""

    name: str = "grid"
    output_dir: str = "runs"
    task: str | None = None  # a registered task (checked by compare); default: the base config's
    base: str | dict[str, Any] = Field(default_factory=dict)  # a config file (relative to the grid) or a mapping
    set: dict[str, Any] = Field(default_factory=dict)  # overrides for every variant
    variants: list[VariantConfig] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    isolate: bool = True  # each run in a fresh process: clean peak-memory numbers, no state leaks
    jobs: int = Field(1, ge=1)  # runs at once (with isolate); timings then share the CPU

    @property
    def grid_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    """An override's value as YAML (numbers, lists, mappings...); what YAML cannot parse is a plain string."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_override(item: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    return key.strip(), _parse_value(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        key, value = split_override(item)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict, source: str = "<config>") -> RunConfig:
    """Validate a nested dict into a RunConfig; errors name every offending field."""
    return validate_config(RunConfig, raw, source)


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """A YAML mapping from a file; a missing file, bad YAML or a non-mapping is a ConfigError naming the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raise ConfigError(f"{path}: the {what} file is empty (start from one of the shipped configs, e.g. "
                          "jointspace/configs/digits.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


def validate_config(model: type[M], raw: dict, source: str) -> M:
    """Validate a nested dict into `model`; errors name every offending field."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, model: type[M] = RunConfig) -> M:
    """Load a YAML config (or defaults when `path` is None), apply CLI overrides and validate it into `model`
    (a task's own config type: `jointspace.tasks.load_task_config` picks it by `task:`)."""
    raw = {} if path is None else read_yaml(path)
    raw = apply_overrides(raw, overrides or [])
    return validate_config(model, raw, "<defaults>" if path is None else str(path))


def save_config(cfg: BaseModel, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def load_grid(path: str | Path) -> GridConfig:
    """Load a `jointspace compare` grid file; errors name the field."""
    grid = validate_config(GridConfig, read_yaml(path, "grid"), str(path))
    names = [v.name for v in grid.variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: variants: duplicate names {dup}")
    return grid
