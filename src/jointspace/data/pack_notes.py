"""What `data pack` says, one line each, about what it left out or derived."""

from __future__ import annotations


def pack_notes(info: dict) -> list[str]:
    """One line each for what `data pack` left out or derived: bad rows, unpaired files, dropped samples,
    grids, points, zero-shot prompts."""
    lines = [f"skipped {row}" for row in info.get("skipped_rows", [])[:5]]
    unpaired, ignored = info.get("unpaired") or {}, info.get("ignored_files") or []
    if unpaired.get("n_files"):
        lines.append(f"unpaired: {unpaired['n_files']} files left out (no file of the same stem in every modality "
                     f"subfolder): {', '.join(unpaired['files'][:10])}{' ...' if unpaired['n_files'] > 10 else ''}")
    if ignored:
        lines.append(f"ignored: {len(ignored)} loose files: {', '.join(ignored[:10])}")
    dropped = info.get("dropped_missing")
    if dropped:
        which = "; ".join(f"{m}: {', '.join(v)}" for m, v in dropped["modalities"].items())
        lines.append(f"--allow-missing: dropped {dropped['n_samples']} samples lacking a modality ({which})")
    for mod, grid in (info.get("grids") or {}).items():
        shape = f"{len(grid['azimuth'])}x{len(grid['azimuth'][0])}" if grid.get("azimuth") else "?"
        lines.append(f"grid of {mod}: {', '.join(grid.get('files', []))} ({shape}"
                     f"{', degrees' if grid.get('degrees') else ''}; no return: {grid.get('no_return')})")
        if grid.get("points"):
            p = grid["points"]
            lines.append(f"points from {mod}: modality {p['modality']}, {p['min_points']}-{p['max_points']} per scan")
    if info.get("zero_shot_prompts_from"):
        n = [len(v) for v in info["zero_shot_prompts"].values()]
        lines.append(f"zero-shot prompts: the {info['zero_shot_prompts_from']} ({min(n)}-{max(n)} per class)")
    return lines
