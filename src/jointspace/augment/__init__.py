"""Generative augmentation: a small class-conditional diffusion model (diffusers) trained on a shard
folder's images, a seeded sampler with classifier-free guidance, and the fix loop that generates
images for a classifier run's worst classes and retrains with them mixed in as an upsampled source."""
