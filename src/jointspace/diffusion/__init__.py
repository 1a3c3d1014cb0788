"""The class-conditional diffusion model, below the tasks: its config (`config.py`: AugmentConfig, the
`augment` YAML and the diffusion task's run config), the diffusers UNet, its noise schedulers, the images
it learns and a trained one loaded back from its run folder (`model.py`). tasks/diffusion.py trains it;
augment/ (above the tasks) samples it, explores settings and runs the fix loop."""
