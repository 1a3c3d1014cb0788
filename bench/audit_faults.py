"""Planted faults, found again by `jointspace audit`: precision and recall of each finder at its default
threshold, beside cleanlab's Datalab (its own defaults, on the same joint embeddings) and FiftyOne's leak rule
(a non-train sample whose nearest train sample is within cosine distance 0.2, as compute_leaky_splits' docs
state it; FiftyOne itself is not installed).

    .venv/bin/python bench/audit_faults.py --work /tmp/audit-bench            # digits and shapes
    .venv/bin/python bench/audit_faults.py --sets digits --epochs 6
    .venv/bin/python bench/audit_faults.py --sets digits --epochs 6 --refit 5   # and as `audit --refit 5`

Faults, planted by `plant` in a copy of each set: 5 % of train labels flipped; 2 % of train samples copied
into test with slight noise (arrays: +N(0, 2) grey levels for integers, +1 % of the array's std for floats;
captions unchanged); 1 % of train samples copied within train exactly; 3 % of train captions swapped between
samples of different classes; 2 % of train range scans (LiDAR) swapped likewise, on sets that have one (the copies
are made after the swaps: a copy of a swapped sample carries the swap and counts as swapped). A small run is
trained on the faulty train split (the audit's setting: the model saw the faults), then audited.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
JOINTSPACE = str(Path(sys.executable).parent / "jointspace")
SMALL = {
    "digits": (ROOT / "src/jointspace/configs/digits.yaml", [
        "model.embed_dim=32", "model.towers.image.params.channels=[16, 32]", "model.towers.text.params.width=32",
        "model.towers.text.params.layers=1", "model.towers.text.params.heads=2",
        "model.towers.audio.params.channels=[32, 32]"]),
    "shapes": (ROOT / "examples/shapes.yaml", [
        "model.embed_dim=32", "data.image_size=32", "model.towers.image.params.channels=[16, 32, 64]",
        "model.towers.lidar.params.channels=[16, 32]", "model.towers.text.params.width=32",
        "model.towers.text.params.layers=1", "model.towers.text.params.heads=2"]),
}
SIZES = {"digits": None, "shapes": 2000}


def _noisy(value, rng: np.random.Generator):
    if isinstance(value, str):
        return value
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.round(arr + rng.normal(0, 2, arr.shape)), info.min, info.max).astype(arr.dtype)
    return (arr + 0.01 * (arr.std() or 1.0) * rng.normal(size=arr.shape)).astype(arr.dtype)


def _swap(samples: list[dict], modality: str, share: float, rng: np.random.Generator, truth: set) -> None:
    """Swap `modality` between pairs of train samples of different classes (a caption of another class
    of digits, a scan of a scene with another shape)."""
    order = rng.permutation(len(samples))
    want, taken, i = round(share * len(samples)), set(), 0
    while len(taken) < want and i + 1 < len(order):
        a, b = int(order[i]), int(order[i + 1])
        i += 2
        if samples[a]["label"] == samples[b]["label"] or a in taken or b in taken:
            continue
        samples[a][modality], samples[b][modality] = samples[b][modality], samples[a][modality]
        taken |= {a, b}
        truth |= {samples[a]["key"], samples[b]["key"]}


def plant(clean: Path, out: Path, seed: int = 0, also: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Write the faulty copy of `clean` to `out`; returns the keys of each planted fault. `also`: modalities
    whose values are swapped too, 2 % of train samples each, as LiDAR scans (truth key `swap:MODALITY`; drawn
    from a generator of their own, so every other fault is planted as without them)."""
    from jointspace.data.shards import ReadStats, iter_samples, read_info, split_urls, write_dataset
    from jointspace.kinds import with_role

    rng = np.random.default_rng(seed)
    info = read_info(clean)
    kinds, n_classes = info["modalities"], len(info["class_names"])
    splits = {s: list(iter_samples(split_urls(clean, s), ReadStats())) for s in info["splits"]}
    train = splits["train"]
    truth: dict[str, set] = {"label": set(), "leak": set(), "duplicate": set(), "caption": set(), "range": set()}
    for i in rng.choice(len(train), round(0.05 * len(train)), replace=False).tolist():
        train[i]["label"] = int((train[i]["label"] + rng.integers(1, n_classes)) % n_classes)
        truth["label"].add(train[i]["key"])
    caption, ranged = with_role(kinds, "captions"), with_role(kinds, "ranged")
    if caption:
        _swap(train, caption, 0.03, rng, truth["caption"])
    if ranged:
        _swap(train, ranged, 0.02, rng, truth["range"])
    for i, modality in enumerate(dict.fromkeys(also)):
        if modality not in kinds:
            raise SystemExit(f"--swap-also {modality}: the set has {sorted(kinds)}")
        truth[f"swap:{modality}"] = set()
        _swap(train, modality, 0.02, np.random.default_rng([seed, 1 + i]), truth[f"swap:{modality}"])
    for i in rng.choice(len(train), round(0.02 * len(train)), replace=False).tolist():
        copy = {**train[i], "key": f"leak-{train[i]['key']}"}
        splits["test"].append({k: (_noisy(v, rng) if k in kinds else v) for k, v in copy.items()})
        truth["leak"].add(copy["key"])
    for i in rng.choice(len(train), round(0.01 * len(train)), replace=False).tolist():
        train.append({**train[i], "key": f"dup-{train[i]['key']}"})
        truth["duplicate"].add(f"dup-{train[i]['key']}")
    write_dataset(out, splits, kinds, info["class_names"], overwrite=True)
    return {k: sorted(v) for k, v in truth.items()}


def train(name: str, data: Path, runs: Path, epochs: int, again: bool, full: bool = False) -> Path:
    """A small run on the faulty data (`full`: the set's shipped model and image size; kept from an earlier
    call unless `again`)."""
    if not again and (runs / name / "model.safetensors").exists():
        return runs / name
    config, small = SMALL[name]
    small = [] if full else small
    sets = [f"name={name}", f"output_dir={runs}", f"data.path={data}", "data.synth=null", "tracker=none",
            "eval.linear_probe=false", f"train.epochs={epochs}", *small]
    cmd = [JOINTSPACE, "train", str(config), "--overwrite", *[x for s in sets for x in ("--set", s)]]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return runs / name


def copied(truth: dict, fault: str) -> set:
    """The samples with a planted swap of `fault`, and the copies planted from them (a duplicate or a leak of
    a sample whose caption was swapped carries the swapped caption: `plant` copies after it swaps)."""
    return set(truth[fault]) | {k for k in truth["duplicate"] | truth["leak"] if k.split("-", 1)[1] in truth[fault]}


def _pr(predicted: set, truth: set) -> tuple[float, float, int, int]:
    hit = len(predicted & truth)
    return (hit / len(predicted) if predicted else float("nan"), hit / len(truth) if truth else float("nan"),
            len(predicted), len(truth))


def datalab_sets(space, probs) -> dict[str, set]:
    """cleanlab's Datalab with its defaults on the joint embeddings: label issues (from features alone, its
    k-NN route, and from the probabilities the audit gives cleanlab), near duplicates, outliers."""
    from cleanlab import Datalab

    keys = np.array(space.keys)
    out = {}
    for name, kw in (("features", {}), ("probs", {"pred_probs": probs})):
        lab = Datalab(data={"label": space.labels.tolist()}, label_name="label", verbosity=0)
        lab.find_issues(features=space.joint(), **kw)
        issues = lab.get_issues()
        for kind in ("label", "near_duplicate", "outlier"):
            column = f"is_{kind}_issue"
            if column in issues:
                out[f"{kind} ({name})"] = set(keys[issues[column].to_numpy()].tolist())
    return out


def fiftyone_leaks(space, distance: float = 0.2) -> set:
    """Non-train samples whose nearest train sample is within cosine distance `distance`."""
    from jointspace.audit.neighbours import flat_index, knn

    joint = space.joint()
    train = np.flatnonzero(space.splits == "train")
    other = np.flatnonzero(space.splits != "train")
    sims, _ = knn(joint[train], 1, flat_index(joint[train]), queries=joint[other])
    return {space.keys[i] for i in other[(1.0 - sims[:, 0]) < distance].tolist()}


def refit_for(name: str, run: Path, data: Path, space, k: int, seed: int, runs: Path, again: bool):
    """The `--refit k` runs of `run` (trained by `jointspace.tasks.refit.train_without`, as the audit command
    trains them; kept in `runs`/NAME-refitK with the folds they were trained for, reused while those match)."""
    from jointspace.audit.refit import fold_of, held_keys, load_refit
    from jointspace.tasks.refit import train_without

    fold = fold_of(space, k, seed)
    held = held_keys(space, fold)
    folder, want = runs / f"{name}-refit{k}", [sorted(h) for h in held]
    stamp = folder / "held.json"
    if again or not stamp.exists() or json.loads(stamp.read_text()) != want:
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        train_without(run, data, held, folder)
        stamp.write_text(json.dumps(want))
        print(f"{name}: {k} refit runs trained in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return load_refit(space, fold, [folder / f"fold-{i}" for i in range(k)], data)


def finder_rows(space, found: list, truth: dict) -> list[tuple[str, set, set]]:
    """(finder, flagged keys, planted keys) for each of the audit's finders."""
    from jointspace.kinds import with_role

    by = lambda pred: {f.key for f in found if pred(f)}
    caption, ranged = with_role(space.kinds, "captions") or "", with_role(space.kinds, "ranged") or ""
    rows = [("exact duplicates", by(lambda f: f.issue == "duplicate"), truth["duplicate"]),
            ("leaks (exact or near)", by(lambda f: f.issue == "leak"), truth["leak"]),
            ("  of which near in the joint space", by(lambda f: f.issue == "leak" and f.detail.get("by") == "joint space"),
             truth["leak"]),
            ("  of which near by content", by(lambda f: f.issue == "leak" and f.detail.get("by") == "content"),
             truth["leak"]),
            ("label issues", by(lambda f: f.issue == "label"), truth["label"])]
    swaps = [("swapped captions", caption, truth["caption"]), ("swapped LiDAR scans", ranged, truth["range"])]
    swaps += [(f"swapped {key[5:]} values (--swap-also)", key[5:], truth[key]) for key in truth if key.startswith("swap:")]
    swaps = [(finder, m, planted) for finder, m, planted in swaps if m and planted]  # (finder, modality, planted)
    for finder, m, planted in swaps:
        rows.append((finder, by(lambda f, m=m: f.issue == "mismatch" and m in f.modality.split("-")), planted))
    swapped = {m for _, m, _ in swaps}
    others = sorted({f.modality for f in found if f.issue == "mismatch" and not swapped & set(f.modality.split("-"))})
    for pair in others:  # pairs with no planted swap: every flag there is a false one
        rows.append((f"mismatch of {pair} (nothing planted)", by(lambda f, p=pair: f.issue == "mismatch" and f.modality == p),
                     set()))
    rows.append(("mismatch, every pair", by(lambda f: f.issue == "mismatch"), set().union(*(p for _, _, p in swaps))))
    return rows


def _audited(name: str, space, found: list, summary: dict, seconds: float, how: str) -> None:
    labels = summary.get("labels", {})
    print(f"{name}{how}: {len(space)} samples audited in {seconds:.1f}s; label accuracy "
          f"{labels.get('accuracy', float('nan')):.3f}; mismatch pairs judged "
          f"{summary.get('mismatch_pairs')}, flags per pair "
          f"{dict(Counter(f.modality for f in found if f.issue == 'mismatch'))}", file=sys.stderr)


def evaluate(name: str, run: Path, data: Path, truth: dict, refit: int = 0, seed: int = 0,
             again: bool = False) -> list[list[str]]:
    from jointspace.audit.findings import joint_neighbours
    from jointspace.audit.labels import judged_probs
    from jointspace.audit.run import Settings, audit_space
    from jointspace.audit.space import load_space

    space = load_space(run, data)
    truth = {**truth, **{fault: copied(truth, fault) for fault in truth if fault in ("caption", "range")
                         or fault.startswith("swap:")}}
    t0 = time.perf_counter()
    found, summary, _ = audit_space(space, Settings())
    _audited(name, space, found, summary, time.perf_counter() - t0, "")
    rows = finder_rows(space, found, truth)
    if refit:
        fitted = refit_for(name, run, data, space, refit, seed, run.parent, again)
        t0 = time.perf_counter()
        found, summary, _ = audit_space(space, Settings(refit=refit, seed=seed), refit=fitted)
        _audited(name, space, found, summary, time.perf_counter() - t0, f" --refit {refit}")
        rows += [(f"{finder} (--refit {refit})", pred, true) for finder, pred, true in finder_rows(space, found, truth)
                 if finder in ("label issues", "mismatch, every pair") or finder.startswith("swapped")
                 or "nothing planted" in finder]
    probs = judged_probs(space, joint_neighbours(space)[1])  # what the audit (without --refit) gives cleanlab
    lab = datalab_sets(space, probs)
    copies = truth["duplicate"] | truth["leak"]
    for key, pred in lab.items():
        rows.append((f"Datalab {key}", pred, truth["label"] if key.startswith("label") else copies))
    rows.append(("FiftyOne leak rule (cosine distance < 0.2)", fiftyone_leaks(space), truth["leak"]))
    out = []
    for finder, pred, true in rows:
        p, r, n_pred, n_true = _pr(pred, true)
        out.append([name, finder, f"{p:.3f}", f"{r:.3f}", str(n_pred), str(n_true)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/audit-bench"))
    ap.add_argument("--sets", nargs="+", default=["digits", "shapes"], choices=list(SMALL))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain", action="store_true", help="plant and train again (default: reuse --work's)")
    ap.add_argument("--full", action="store_true", help="train the shipped config's model and image size, not the small one")
    ap.add_argument("--swap-also", nargs="+", default=[], metavar="MODALITY",
                    help="swap these modalities' values too, 2 %% of train samples each (not among the issue's faults; "
                    "planted beside them, which stay as without it; with --retrain, or in a new --work: the planted "
                    "truth is kept in --work)")
    ap.add_argument("--refit", type=int, default=0, help="K >= 2: also audit as `jointspace audit --refit K` "
                    "(K more trainings, kept in --work and reused)")
    args = ap.parse_args()
    from jointspace.data.builtin import synthesize

    table = []
    for name in args.sets:
        clean, faulty = args.work / name, args.work / f"{name}-faulty"
        if not (clean / "dataset.json").exists():
            synthesize(name, clean, seed=args.seed, n=SIZES[name])
        truth_file = args.work / f"{name}-truth.json"
        if args.retrain or not truth_file.exists():
            truth_file.write_text(json.dumps(plant(clean, faulty, args.seed, tuple(args.swap_also)), indent=1))
        truth = json.loads(truth_file.read_text())
        run = train(name, faulty, args.work / "runs", args.epochs, args.retrain, args.full)
        table += evaluate(name, run, faulty, {k: set(v) for k, v in truth.items()}, args.refit, args.seed,
                          args.retrain)
    print("| set | finder | precision | recall | flagged | planted |")
    print("|---|---|---:|---:|---:|---:|")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
