"""Training-step time of the SASA ResNet-26s against the conv ResNet-26, in the same process.

One SGD step (forward, backward, momentum update; the `sasa` study's optimiser) of each network on the same random
batch, timed alternately with the conv ResNet-26 (A B A B ...): ``ratio`` is its step time / the conv one's. The
input is stated in the output: by default Fashion-MNIST's shape (1×28×28, the `sasa` study's full profile) in
batches of 32, with the study's CIFAR-style stems; ``--size 14`` is the quick profile's.

    python benchmarks/sasa_step.py [--json] [--size 28] [--batch-size 32] [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, paired_median_ms

from attngraft.models import create_model

BASELINE = ("resnet26", "cifar")
NETWORKS = [("sasa_resnet26", "cifar"), ("sasa_resnet26_attnstem", "attention_cifar")]


def make_step(name: str, stem: str, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One SGD step of a fresh ``name`` network."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=images.shape[1], stem=stem).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step() -> None:
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--size", type=int, default=28, help="image side (1 channel)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--quick", action="store_true", help="batch 2 of 8×8, one repeat (a smoke run, not a measurement)"
    )
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.size, arguments.batch_size, arguments.repeats = 8, 2, 1
    torch.manual_seed(0)
    images = torch.randn(arguments.batch_size, 1, arguments.size, arguments.size)
    labels = torch.randint(0, 10, (arguments.batch_size,))
    baseline = make_step(*BASELINE, images, labels)
    rows = []
    for name, stem in NETWORKS:
        step_ms, conv_ms = paired_median_ms(make_step(name, stem, images, labels), baseline, arguments.repeats)
        rows.append({"network": name, "step_ms": round(step_ms, 1), "conv_step_ms": round(conv_ms, 1),
                     "ratio": round(step_ms / conv_ms, 2)})  # fmt: skip
    result = {"benchmark": "sasa_step", "input": [arguments.batch_size, 1, arguments.size, arguments.size],
              "baseline": BASELINE[0], "rows": rows, "machine": machine()}  # fmt: skip
    if arguments.json:
        print(json.dumps(result, indent=2))
        return
    print(f"one SGD step, input {tuple(result['input'])}, against {BASELINE[0]}; machine: {machine()}")
    for row in rows:
        timings = f"{row['step_ms']:>9.1f} ms  conv {row['conv_step_ms']:>7.1f} ms"
        print(f"{row['network']:<26}{timings}  ratio {row['ratio']}")


if __name__ == "__main__":
    main()
