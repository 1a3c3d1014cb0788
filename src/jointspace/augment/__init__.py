"""Generative augmentation: a seeded sampler with classifier-free guidance over a small class-conditional
diffusion model (jointspace.diffusion; the diffusion task trains it) or any diffusers pipeline, settings
explored by a joint space, and the fix loop that generates images for a classifier run's worst classes
and retrains with them mixed in as an upsampled source. It runs tasks: it sits above them."""
