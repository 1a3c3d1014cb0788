"""An independent judge of the audit's image-audio flags on digits where nothing was planted: are they wrong
recordings? A small 1-D CNN on the raw MFCC sequences of all 3,000 Free Spoken Digit recordings, outside
jointspace and the run, k-fold cross-validated (seeds averaged), gives every recording out-of-fold class
probabilities; each flagged recording is then one it places in another class, one it places in its class
with under 0.8, or one it places there surely. The base rates over all recordings are the bound to read the
flags against.

    .venv/bin/python bench/audit_faults.py --work /tmp/d0 --sets digits --epochs 6 --seed 0 --retrain
    .venv/bin/python bench/audit_judge.py /tmp/d0 [/tmp/d0f ...]   # bench/audit_faults.py work folders

Each folder's run is audited with the default settings (as `audit_faults.py` does); recordings planted by
`--swap-also audio` are left out. Trains the judge once per call (about 5 minutes per seed on 2 cores);
`--probs FILE` keeps its probabilities and reuses them (then `--seeds` is not read).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from audit_faults import copied

ATYPICAL_BELOW = 0.8  # the judge's own-class probability below which a recording counts as atypical


def judge(seqs: list[np.ndarray], y: np.ndarray, seeds: int = 3, folds: int = 5, epochs: int = 40) -> np.ndarray:
    """[N, 10] out-of-fold class probabilities of the spoken-digit recordings `seqs` ([T, 13] MFCCs) with
    labels `y` [N], averaged over `seeds`."""
    import torch
    from sklearn.model_selection import StratifiedKFold
    from torch import nn

    frames = np.concatenate(seqs)
    mu, sd = frames.mean(0), frames.std(0)
    t = max(len(s) for s in seqs)
    x, mask = np.zeros((len(seqs), 13, t), np.float32), np.zeros((len(seqs), 1, t), np.float32)
    for i, s in enumerate(seqs):
        x[i, :, :len(s)], mask[i, :, :len(s)] = ((s - mu) / sd).T, 1.0
    x, mask, labels = torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv1d(13, 64, 3, padding=1), nn.Conv1d(64, 96, 3, padding=1),
                                        nn.Conv1d(96, 128, 3, padding=1)])
            self.out, self.drop = nn.Linear(256, 10), nn.Dropout(0.3)

        def forward(self, v, m):
            for conv in self.convs:
                v = torch.relu(conv(v)) * m
            mean, top = v.sum(-1) / m.sum(-1), (v - 1e4 * (1 - m)).amax(-1)
            return self.out(self.drop(torch.cat([mean, top], 1)))

    probs = np.zeros((seeds, len(y), 10))
    for seed in range(seeds):
        for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
            torch.manual_seed(seed)
            net = Net()
            opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-3)
            for epoch in range(epochs):
                net.train()
                for batch in torch.from_numpy(np.random.default_rng(epoch + 100 * seed).permutation(fit)).split(64):
                    loss = nn.functional.cross_entropy(net(x[batch], mask[batch]), labels[batch], label_smoothing=0.05)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            net.eval()
            with torch.no_grad():
                probs[seed, held] = torch.softmax(net(x[held], mask[held]), 1).numpy()
        print(f"judge seed {seed}: out-of-fold accuracy {(probs[seed].argmax(1) == y).mean():.4f}", file=sys.stderr)
    return probs.mean(0)


def unplanted_flags(work: Path) -> list[int]:
    """The recording index of each image-audio mismatch flag of `work`'s digits run, audited with the
    default settings, whose recording was not planted there."""
    from jointspace.audit.run import Settings, audit_space
    from jointspace.audit.space import load_space
    from jointspace.data.shards import ReadStats, iter_samples, read_info, split_urls

    truth = {k: set(v) for k, v in json.loads((work / "digits-truth.json").read_text()).items()}
    planted = copied(truth, "swap:audio") if "swap:audio" in truth else set()
    faulty = work / "digits-faulty"
    recording = {s["key"]: int(s["meta"]["audio_index"]) for split in read_info(faulty)["splits"]
                 for s in iter_samples(split_urls(faulty, split), ReadStats())}
    found, _, _ = audit_space(load_space(work / "runs" / "digits", faulty), Settings())
    return [recording[f.key] for f in found
            if f.issue == "mismatch" and f.modality == "image-audio" and f.key not in planted]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="+", help="bench/audit_faults.py work folders with a digits run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--probs", type=Path, help="keep the judge's probabilities in this file (numpy's format), and "
                    "reuse them")
    args = ap.parse_args()
    from jointspace.data.builtin.digits import spoken_digits

    seqs, y = spoken_digits()
    y = np.asarray(y, dtype=np.int64)
    if args.probs and args.probs.exists():
        probs = np.load(args.probs)
    else:
        probs = judge(seqs, y, args.seeds)
        if args.probs:
            with open(args.probs, "wb") as f:  # the name as given (np.save would add .npy)
                np.save(f, probs)
    own = probs[np.arange(len(y)), y]
    other = probs.argmax(1) != y
    unsure = ~other & (own < ATYPICAL_BELOW)
    misplaced = [(int(i), int(y[i]), int(probs[i].argmax()), round(float(probs[i].max()), 3))
                 for i in np.flatnonzero(other)]  # (recording, its label, the judge's class, its probability)
    print(f"judge: out-of-fold accuracy {1 - other.mean():.4f}; of all {len(y)} recordings, in another class "
          f"{other.mean():.4f}, in their class under {ATYPICAL_BELOW} {unsure.mean():.4f}; "
          f"in another class: {misplaced}")
    print(f"| run | image-audio flags, nothing planted | the judge: another class | its class, under {ATYPICAL_BELOW} "
          "| its class, surely |")
    print("|---|---:|---:|---:|---:|")
    total, counts = np.zeros(4, dtype=int), {}
    for work in args.work:
        rows = np.array(unplanted_flags(work), dtype=np.int64)
        n = np.array([len(rows), other[rows].sum(), unsure[rows].sum(), (~other & ~unsure)[rows].sum()])
        total += n
        for r in rows.tolist():
            counts[r] = counts.get(r, 0) + 1
        print(f"| {work} | {n[0]} | {n[1]} | {n[2]} | {n[3]} |")
    print(f"| all ({len(counts)} distinct recordings) | {total[0]} | {total[1]} | {total[2]} | {total[3]} |")
    often = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
    print(f"most flagged recordings (index: runs): {dict(often)}", file=sys.stderr)


if __name__ == "__main__":
    main()
