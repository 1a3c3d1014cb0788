"""Where a training step's batch comes from: decoded-in-memory splits or streamed shards.

Both yield, for every step of an epoch, this rank's batch of input tensors and the positive mask
over the global batch (all ranks), and both can start an epoch after `skip` steps for an exact
mid-epoch resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from jointspace.config import RunConfig
from jointspace.data.dataset import SplitData
from jointspace.data.shards import read_info, split_urls
from jointspace.data.sources import TrainSampler
from jointspace.data.stream import ShardStream, stream_loader
from jointspace.losses import positive_mask
from jointspace.train.distributed import DistInfo, gather_no_grad, shard_batch

Step = tuple[dict[str, torch.Tensor], torch.Tensor | None]


class InMemoryBatches:
    """Seeded index batches over a split held as tensors; the global batch is known on every rank."""

    def __init__(self, cfg: RunConfig, data: SplitData, dist_info: DistInfo, device: torch.device,
                 text_key: str | None):
        self.cfg, self.data, self.dist, self.device, self.text_key = cfg, data, dist_info, device, text_key
        self.sampler = TrainSampler.from_config(cfg.data, data)
        self.steps_per_epoch = self.sampler.n_samples // cfg.train.batch_size
        data.inputs = {k: v.to(device) for k, v in data.inputs.items()}
        data.labels = data.labels.to(device)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Step]:
        """(local batch, global positive mask) per step, from step `skip` on."""
        for k, idx in enumerate(self.sampler.batches(self.cfg.train.batch_size, self.cfg.seed, epoch)):
            if k < skip:
                continue
            idx = idx.to(self.device)
            mask = positive_mask(self.data.batch(idx), self.cfg.loss.positives, self.text_key)
            yield self.data.batch(shard_batch(idx, self.dist)), mask


class StreamedBatches:
    """Each rank streams its own shards; labels (and captions) are gathered for the global mask."""

    def __init__(self, cfg: RunConfig, kinds: dict[str, str], tokenizers: dict[str, str], dist_info: DistInfo,
                 device: torch.device, text_key: str | None):
        self.cfg, self.kinds, self.tokenizers = cfg, kinds, tokenizers
        self.dist, self.device, self.text_key = dist_info, device, text_key
        self.urls = split_urls(cfg.data.path, "train")
        n_samples = read_info(cfg.data.path)["splits"]["train"]["n_samples"]
        self.local_batch = cfg.train.batch_size // dist_info.world_size
        # whole batches every rank can fill, even if its shards hold fewer samples than the average
        per_rank = n_samples // dist_info.world_size
        self.steps_per_epoch = max(0, per_rank // self.local_batch - (1 if dist_info.enabled else 0))

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Step]:
        """(local batch, global positive mask) per step, from step `skip` on."""
        d = self.cfg.data
        stream = ShardStream(self.urls, self.kinds, self.local_batch, self.cfg.seed, epoch, self.dist.rank,
                             self.dist.world_size, d.resampled, skip, d.image_size, d.context_length, d.max_frames,
                             self.tokenizers, d.shuffle_buffer)
        step = skip
        for batch in stream_loader(stream, d.num_workers):
            if step >= self.steps_per_epoch:
                break
            batch = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
            glob = {"label": gather_no_grad(batch["label"])}
            if self.cfg.loss.positives == "caption" and self.text_key:
                glob[self.text_key] = gather_no_grad(batch[self.text_key])
            yield batch, positive_mask(glob, self.cfg.loss.positives, self.text_key)
            step += 1
