"""``python -m attngraft.blocks.kernels build``: compiles the k×k attention kernel into its cache (``make setup``)."""

from __future__ import annotations

import argparse
import sys

from attngraft.blocks.kernels import native


def main(argv: list[str] | None = None) -> int:
    """Builds the kernel (or prints its path); returns the exit status (a failed build is not an error)."""
    parser = argparse.ArgumentParser(prog="python -m attngraft.blocks.kernels", description=__doc__)
    parser.add_argument("command", choices=["build", "path"], help="build: compile if needed; path: print where it is")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached library exists")
    args = parser.parse_args(argv)
    try:
        path = native.build(force=args.force) if args.command == "build" else native.build()
    except RuntimeError as error:
        print(f"k×k attention kernel: not built ({error}); the pure-PyTorch kernels will be used", file=sys.stderr)
        return 0 if args.command == "build" else 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
