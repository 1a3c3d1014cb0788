"""The sections of a run's config: data, model (towers, heads, LoRA), loss, train, eval, index."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    create_model,
    field_validator,
    model_validator,
)

from jointspace.config.base import _Strict, renamed_key
from jointspace.errors import UsageError
from jointspace.kinds import size_fields
from jointspace.losses.registry import loss_class, loss_params
from jointspace.preemption import signal_number


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
    # `jointspace mine`'s parquet: each anchor's mined negatives, n_per_anchor of them drawn per epoch
    # (seeded) and scored as extra candidates of the anchor's rows (in-memory train split only)
    hard_negatives: str | None = None
    n_per_anchor: int = Field(1, ge=1)
    # random: a seeded permutation; no_duplicates: also no two samples of one key or one caption in a batch
    batch_sampler: Literal["random", "no_duplicates"] = "random"

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
    def _in_memory_only(self) -> DataConfig:
        """Mined negatives and no-duplicate batches read the decoded train split (a negative's content by
        its key, every caption of the epoch); a streamed split has neither."""
        if self.streaming and self.hard_negatives:
            raise UsageError("data.hard_negatives needs the train split in memory: set data.streaming: false")
        if self.streaming and self.batch_sampler != "random":
            raise UsageError("data.batch_sampler: no_duplicates needs the train split in memory (a streamed "
                             "split is shuffled in a buffer): set data.streaming: false")
        if self.resampled and self.batch_sampler != "random":
            raise UsageError("data.batch_sampler: no_duplicates visits each sample once per epoch; it does "
                             "not combine with data.resampled")
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
    patch_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # share of image patch tokens dropped in training (ViTs)
    init_from: str | None = None  # "runs/x#image[@fingerprint]": start from that finished run's tower
    unlocked_groups: int | None = Field(None, ge=0)  # only the last N layer groups train (None: all)
    freeze_norms: bool = False  # with unlocked_groups: the locked part's norm layers stay in eval mode
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)  # group lr = lr * decay^(depth from the top)

    @model_validator(mode="after")
    def _tuning_fits(self) -> TowerConfig:
        """Partial unlocking and layer decay tune the tower's own weights: not with freeze or lora."""
        if self.freeze_norms and self.unlocked_groups is None:
            raise UsageError("freeze_norms needs unlocked_groups (the norms of the locked part stay frozen)")
        for name in ("unlocked_groups", "layer_decay"):
            if getattr(self, name) is not None and (self.freeze or self.lora):
                other = "freeze" if self.freeze else "lora"
                raise UsageError(f"{name} and {other} exclude each other ({name} trains the tower's own layers)")
        return self


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


class DistillConfig(_Strict):
    """`loss.distill`: a finished joint-space run as a frozen teacher, whose similarity distributions over
    each batch the student matches (open_clip's DistillClipLoss), added to the task loss x `weight`."""

    teacher: str  # its run folder
    weight: float = Field(1.0, gt=0.0)
    # the teacher's softmax temperature; None: its own learned logit scale (open_clip). The student is
    # always scored at its own logit scale.
    temperature: float | None = Field(None, gt=0.0)


class LossConfig(_Strict):
    name: str = "infonce"  # a registered loss (jointspace.losses.LOSSES)
    params: dict[str, Any] = Field(default_factory=dict)  # the loss's own settings, checked by its Params
    positives: Literal["instance", "label", "caption"] = "label"
    anchor: str | None = None  # ImageBind-style: bind every other modality to this one
    pairs: list[tuple[str, str]] | None = None  # explicit pairs; default: anchor pairs or all pairs
    weights: dict[str, float] = Field(default_factory=dict)  # "a-b" or modality name -> weight
    # GISTEmbed: a finished joint-space run whose similarities leave likely false negatives out of each
    # anchor's negatives (those it scores above the anchor's own pair, less the margin)
    guide: str | None = None
    guide_margin: float = 0.0
    guide_margin_strategy: Literal["absolute", "relative"] = "absolute"  # pos - margin | pos - |pos| x margin
    distill: DistillConfig | None = None

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        loss_class(v)
        return v

    @model_validator(mode="after")
    def _params_fit_the_loss(self) -> LossConfig:
        loss_params(self.name, self.params)
        return self

    @model_validator(mode="after")
    def _margin_needs_a_guide(self) -> LossConfig:
        if self.guide is None and (self.guide_margin != 0.0 or self.guide_margin_strategy != "absolute"):
            raise UsageError("loss.guide_margin / loss.guide_margin_strategy: set loss.guide (the guide run)")
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
