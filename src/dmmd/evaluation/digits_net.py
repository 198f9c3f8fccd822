"""A small digits classifier whose features give "FD-digits", an Inception-style score and class
coverage for the embedded default (the Inception network's role for 8x8 digits).

The network is an MLP 64 -> 128 -> 64 -> 10 trained on the digits training split only by
`python -m dmmd.evaluation.digits_net --train` (deterministic, about 10 s on a CPU); its weights
ship with the package (digits_classifier.safetensors, about 40 KB) and load without running code.
FD-digits is the Frechet distance between the 64-D penultimate features of two image sets.
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from dmmd.data.datasets import load_digits
from dmmd.evaluation.metrics import frechet_distance, inception_score

WEIGHTS = Path(__file__).with_name("digits_classifier.safetensors")


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, 64) of digits in [-1, 1], any shape (N, ...) with 64 values."""
        return self.body(x.reshape(x.shape[0], 64).clamp(-1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(epochs: int = 300, seed: int = 0) -> tuple[DigitsNet, float]:
    """Full-batch Adam with weight decay on the training split; returns (net, held-out accuracy)."""

    data = load_digits()
    torch.manual_seed(seed)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    x, y = data.train.flatten(1), data.labels_train
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = float((net(data.test).argmax(1) == data.labels_test).float().mean())
    return net.eval(), acc


@lru_cache(maxsize=1)
def load_classifier() -> DigitsNet:
    from safetensors.torch import load_file

    net = DigitsNet()
    net.load_state_dict(load_file(WEIGHTS))
    return net.eval().requires_grad_(False)


def digits_scores(samples: Tensor, reference: Tensor) -> dict:
    """FD-digits, Inception-style score and class coverage of samples against reference digits."""

    net = load_classifier()
    with torch.no_grad():
        fs, fr = net.features(samples.float()), net.features(reference.float())
        logits = net.head(fs)
    counts = torch.bincount(logits.argmax(1), minlength=10)
    score, _ = inception_score(logits.double(), splits=1)
    return {"fd_digits": frechet_distance(fs.double(), fr.double()), "is_digits": score,
            "classes_covered": int((counts > 0).sum()), "max_class_share": float(counts.max() / len(samples))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train and write the shipped weights")
    args = parser.parse_args(argv)
    if args.train:
        from safetensors.torch import save_file

        torch.set_num_threads(1)  # bit-reproducible weights
        net, acc = train_classifier()
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS))
        print(f"held-out accuracy {acc:.4f}; wrote {WEIGHTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
