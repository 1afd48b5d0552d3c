"""Training-step time of a recipe's network under each speed option, against fp32 in the same process.

One optimiser step (forward, backward, AdamW) on a real Fashion-MNIST batch, timed alternately with the fp32
baseline (A B A B ...), for: bf16 autocast, channels-last memory, torch.compile, and bf16 + channels-last.
``ratio`` is option time / fp32 time (below 1 is faster).

    python benchmarks/train_speed.py [--json] [--network resnet18] [--batch-size 128] [--repeats 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, paired_median_ms

from attngraft.data.datamodule import ImageDataModule
from attngraft.train import build_network

OPTIONS = {
    "bf16": {"bf16": True},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16+channels_last": {"bf16": True, "channels_last": True},
}


def make_step(
    network: str, images: torch.Tensor, labels: torch.Tensor, *, bf16: bool = False, channels_last: bool = False,
    compile: bool = False,
) -> Callable[[], None]:  # fmt: skip
    """One optimiser step of a fresh copy of ``network`` with the given options."""
    torch.manual_seed(0)
    model = build_network(network, num_classes=10, in_chans=1).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--network", default="resnet18", help="zoo name or torchvision/timm name")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    arguments = parser.parse_args()

    data = ImageDataModule(batch_size=arguments.batch_size, train_size=arguments.batch_size, num_workers=0)
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    baseline = make_step(arguments.network, images, labels)
    rows = []
    for name, options in OPTIONS.items():
        step = make_step(arguments.network, images, labels, **options)
        for _ in range(2):  # compile and autocast caches warm up outside the timing
            step()
        option_ms, fp32_ms = paired_median_ms(step, baseline, arguments.repeats)
        rows.append({"option": name, "step_ms": round(option_ms, 1), "fp32_step_ms": round(fp32_ms, 1),
                     "ratio": round(option_ms / fp32_ms, 3)})  # fmt: skip
    result = {
        "benchmark": "train_speed",
        "network": arguments.network,
        "batch_size": arguments.batch_size,
        "rows": rows,
        "machine": machine(),
    }
    if arguments.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{arguments.network}, batch {arguments.batch_size}, one AdamW step")
    for row in rows:
        print(
            f"{row['option']:<22}{row['step_ms']:>9.1f} ms  fp32 {row['fp32_step_ms']:>7.1f} ms  ratio {row['ratio']}"
        )


if __name__ == "__main__":
    main()
