#!/usr/bin/env bash
# Installs the default dataset (Fashion-MNIST, Debian package dataset-fashion-mnist) when it is missing.
# Idempotent: does nothing when the files are already there.
set -euo pipefail
target=/usr/share/datasets/fashion-mnist
command_line="apt-get install -y dataset-fashion-mnist"
if [ -d "$target" ] && [ -n "$(ls -A "$target" 2>/dev/null)" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Fashion-MNIST: $command_line"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
        exit 0
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
        exit 0
    fi
fi
echo "Fashion-MNIST is not installed at $target. Install it with: sudo $command_line" >&2
echo "(or point attngraft at your own copy: --data-dir DIR or ATTNGRAFT_DATA=DIR)" >&2
