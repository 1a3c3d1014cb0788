"""Command line for generative augmentation: `augment train|sample|fix` (mounted by jointspace.cli)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointspace.cli_errors import friendly
from jointspace.run_dir import RunDir

augment_app = typer.Typer(no_args_is_help=True, help="Diffusion models for augmentation: train, sample, fix a run.")
console = Console()
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="augment YAML (default: built-in defaults)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set train.steps=500")]
_friendly = friendly(console)


@augment_app.command("train")
@_friendly
def augment_train(
    data: Annotated[str | None, typer.Option("--data", help="shard folder (default: the config's data.path)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue the run from its latest checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
) -> None:
    """Alias of `jointspace train CONFIG` with task: diffusion (--data sets data.path)."""
    from jointspace.diffusion.config import load_augment_config
    from jointspace.tasks.diffusion import train_diffusion

    cfg = load_augment_config(config, [*([f"data.path={data}"] if data else []), *(set_ or [])])
    console.print(f"done: {train_diffusion(cfg, resume=resume, overwrite=overwrite)}")


@augment_app.command("sample")
@_friendly
def augment_sample(
    model: Annotated[str, typer.Argument(help="`augment train` run folder, a local diffusers pipeline folder, or "
                                              "a hub id (org/name; downloaded where online)")],
    out: Annotated[Path, typer.Option("--out", help="output folder: <class>/<i>.png, samples.json, grid.png")],
    n_per_class: Annotated[int, typer.Option(min=1, help="images per class")] = 16,
    guidance: Annotated[float, typer.Option(min=0.0, help="classifier-free guidance scale (0: unconditional)")] = 2.0,
    steps: Annotated[int, typer.Option(min=1, help="denoising steps")] = 50,
    scheduler: Annotated[str, typer.Option(help="ddpm, ddim, euler, euler-a, dpm++ or unipc")] = "ddim",
    seed: int = 0,
    class_: Annotated[list[str] | None, typer.Option("--class", help="class to sample, repeatable (default: all); "
                                                     "a pipeline takes its class names from here")] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="text-to-image: prompt template of a class ({} = its "
                                                     "name), repeatable (cycled over the images)")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="text-to-image: negative prompt")] = None,
    strength: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="image-to-image from the class's real "
                                                   "images in --data (0: keep them, 1: ignore them)")] = None,
    data: Annotated[Path | None, typer.Option(help="shard folder with the classes' real images (--strength)")] = None,
    grid_guidance: Annotated[str, typer.Option(help="also write grid.png: guidance values of the grid, "
                                               "comma-separated, e.g. 0,1,2,4 (default: no grid)")] = "",
    grid_steps: Annotated[str, typer.Option(help="step counts of the grid, comma-separated")] = "10,25,50",
    device: str = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace earlier samples in --out (never another folder)")] = False,
) -> None:
    """Generate N images per class (with --grid-guidance, also grid.png exploring guidance x steps at the
    same seed)."""
    from jointspace.augment.sample import (
        SAMPLES_FOLDER,
        class_ids,
        load_sampler,
        real_images,
        settings_grid,
        write_samples,
    )

    if (strength is None) != (data is None):
        raise typer.BadParameter("image-to-image needs both --strength and --data")
    sources = [p for p in (Path(model), data) if p is not None and p.exists()]
    SAMPLES_FOLDER.check(out, overwrite, sources)
    init = real_images(data, class_ or []) if data is not None else None
    sampler = load_sampler(model, device, class_names=class_, prompt_template=prompt or ["a photo of {}"],
                           negative_prompt=negative_prompt, init_images=init, strength=strength or 0.6)
    ids = class_ids(sampler, class_ if RunDir(model).has_info() else None)
    gs = [float(x) for x in grid_guidance.split(",") if x.strip()]
    ss = [int(x) for x in grid_steps.split(",") if x.strip()]
    images = {}
    for k, c in enumerate(ids, 1):
        t0 = time.time()
        images[c] = sampler.sample_class(c, n_per_class, guidance, steps, scheduler, seed)
        console.print(f"class {k}/{len(ids)} {sampler.class_names[c]}: {n_per_class} images in {time.time() - t0:.1f}s")
    settings = {"model": str(model), "guidance": guidance, "steps": steps, "scheduler": scheduler, "seed": seed,
                "prompts": prompt, "negative_prompt": negative_prompt, "strength": strength,
                "data": None if data is None else str(data)}
    with SAMPLES_FOLDER.staged(out, overwrite, sources) as stage:
        n = write_samples(stage, images, sampler.class_names, settings)
        if gs and ss:
            console.print(f"grid: {len(gs)} x {len(ss)} panels of {len(ids)} classes ...")
            settings_grid(sampler, ids, gs, ss, scheduler, seed, stage / "grid.png")
    console.print(f"wrote {n} images to {out}" + (f"; grid {out / 'grid.png'}" if gs and ss else ""))


@augment_app.command("explore")
@_friendly
def augment_explore(
    model: Annotated[str, typer.Argument(help="`augment train` run, diffusers pipeline folder or hub id")],
    joint: Annotated[Path, typer.Option(help="a contrastive run whose joint space scores the images")],
    out: Annotated[Path, typer.Option("--out", help="folder: explore.json / .md / .png / .html")],
    class_: Annotated[list[str] | None, typer.Option("--class", help="class, repeatable (a pipeline: required)")] = None,
    guidance: Annotated[str, typer.Option(help="guidance values, comma-separated")] = "1,3,7",
    steps: Annotated[str, typer.Option(help="step counts, comma-separated")] = "10,25",
    scheduler: Annotated[str, typer.Option(help="schedulers, comma-separated")] = "ddim,euler-a,dpm++",
    n: Annotated[int, typer.Option(min=1, help="images per class and cell")] = 4,
    prompt: Annotated[list[str] | None, typer.Option(help="prompt template(s) of a class ({} = its name)")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="negative prompt")] = None,
    seed: int = 0,
    device: str = "auto",
) -> None:
    """A grid of guidance x steps x scheduler at one seed, scored by a joint space and by wall time."""
    from jointspace.augment.explore import explore
    from jointspace.augment.sample import load_sampler

    sampler = load_sampler(model, device, class_names=class_, prompt_template=prompt or ["a photo of {}"],
                           negative_prompt=negative_prompt)
    rows = explore(sampler, joint, out, class_ if RunDir(model).has_info() else None,
                   [float(x) for x in guidance.split(",") if x.strip()], [int(x) for x in steps.split(",") if x.strip()],
                   [x.strip() for x in scheduler.split(",") if x.strip()], seed, n)
    best = max(rows, key=lambda r: (r["R@1"], r["cosine"]))
    console.print(f"wrote {out}/explore.html ({len(rows)} cells; best: {best['scheduler']}, guidance "
                  f"{best['guidance']:g}, {best['steps']} steps: R@1 {best['R@1']:.3f}, cosine {best['cosine']:.3f})")


@augment_app.command("fix")
@_friendly
def augment_fix(
    run: Annotated[Path, typer.Argument(help="classifier run (`jointspace classify`) or contrastive run (`jointspace train`) folder")],
    diffusion: Annotated[Path | None, typer.Option(help="diffusion run or pipeline folder (default: train one "
                                                   "on the run's data into OUT/diffusion)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default: RUN-fix next to RUN)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="redo a finished fix folder")] = False,
) -> None:
    """Find the run's worst classes, generate images of them, retrain with them mixed in, compare before/after."""
    from jointspace.augment.fix import FIX_JSON, FIX_MD, run_fix
    from jointspace.augment.report import FIX_HTML
    from jointspace.diffusion.config import load_augment_config

    cfg = load_augment_config(config, set_ or [])
    result = run_fix(run, cfg, diffusion, out, overwrite, log=console.print)
    folder = Path(result["out"])
    console.print((folder / FIX_MD).read_text(), soft_wrap=True, markup=False, highlight=False)
    console.print(f"written: {folder}/{FIX_MD}, {FIX_JSON}, {FIX_HTML}")
