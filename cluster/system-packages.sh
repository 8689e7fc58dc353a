#!/usr/bin/env bash
# System packages solo needs: libaio-dev, for DeepSpeed's NVMe offload (its async I/O op); chromium, the
# headless browser the chat page's tests drive. Installs what is missing when it can (root, or passwordless
# sudo); otherwise says what to run.
set -euo pipefail
missing=()
dpkg -s libaio-dev >/dev/null 2>&1 || missing+=(libaio-dev)
dpkg -s chromium >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
why="for NVMe offload and the chat page's browser tests; everything else works without them"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: install ${missing[*]} with your package manager ($why)" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; else
  echo "note: run 'sudo apt-get install -y ${missing[*]}' ($why)" >&2
  exit 0
fi
echo "installing ${missing[*]} (for DeepSpeed NVMe offload and the chat page's browser tests)"
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
