"""`augment fix` with a text-to-image pipeline: prompts from a failing class's name and from its captions
that the run's joint space places nearest the class it is confused with; image-to-image from the class's
real images; optionally, only the generated images the joint space places nearer their own class than
the confused one are kept (the model's own judgement, reported separately)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jointspace.augment.explore import class_centroids, fit_channels
from jointspace.data.dataset import load_split
from jointspace.errors import UsageError
from jointspace.index.query import Encoder
from jointspace.kinds import with_role
from jointspace.tasks import get_task, task_of_run


def confused_with(analysis: dict, target: str) -> str | None:
    """The class `target` is most often taken for (the analysis's most confused pairs)."""
    return next((p["predicted"] for p in analysis.get("most_confused", []) if p["true"] == target), None)


def _joint(run_dir: Path) -> Encoder | None:
    """The run's joint space, when its task's towers form one with a caption and a picture modality; else None."""
    if not get_task(task_of_run(run_dir)).joint_space:
        return None
    enc = Encoder.from_run(run_dir)
    return enc if with_role(enc.kinds, "captions") and with_role(enc.kinds, "picture") else None


def class_prompts(run_dir: Path, data_path: str, analysis: dict, targets: list[str], templates: list[str],
                  k: int) -> dict[str, list[str]]:
    """Per target: the templates over its name, then its `k` captions (train split) nearest the confused
    class's text centroid relative to its own (a contrastive run's joint space; else its first captions)."""
    enc = _joint(run_dir)
    text = with_role(enc.kinds, "captions") if enc else None
    out = {c: [t.format(c) for t in templates] for c in targets}
    if k == 0 or text is None:
        return out
    data = load_split(data_path, "train", [text])
    captions = [v[0] if isinstance(v, (list, tuple)) and v else v for v in data.captions.get(text, [])]
    names = list(enc.info.class_names or data.class_names)
    cents = class_centroids(enc, names)
    for c in targets:
        own = [str(captions[i]) for i in range(len(captions)) if data.class_names[int(data.labels[i])] == c]
        own = list(dict.fromkeys(own))
        other = confused_with(analysis, c)
        if not own or other is None:
            out[c] += own[:k]
            continue
        emb = enc.encode(text, own)
        pull = emb @ cents[names.index(other)] - emb @ cents[names.index(c)]
        out[c] += [own[i] for i in np.argsort(-pull)[:k]]
    return out


def judge(run_dir: Path, analysis: dict, images: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """Keep the images the run's joint space places nearer their own class's text than the confused
    class's; returns (kept images, {class: {kept, dropped, confused_with}})."""
    enc = _joint(run_dir)
    if enc is None:
        raise UsageError(f"{run_dir}: fix.filter needs a contrastive run with images and captions")
    names = list(enc.info.class_names or [])
    cents = class_centroids(enc, names)
    picture = with_role(enc.kinds, "picture")
    channels = int(enc.prep.channels.get(picture, 3))
    kept, report = {}, {}
    for c, arr in images.items():
        other = confused_with(analysis, c)
        if other is None or not len(arr):
            kept[c], report[c] = arr, {"kept": len(arr), "dropped": 0, "confused_with": other}
            continue
        emb = enc.encode(picture, fit_channels(arr, channels), check=False)
        keep = emb @ cents[names.index(c)] > emb @ cents[names.index(other)]
        kept[c] = arr[keep]
        report[c] = {"kept": int(keep.sum()), "dropped": int((~keep).sum()), "confused_with": other}
    return kept, report
