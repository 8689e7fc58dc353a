#!/usr/bin/env bash
# Join this machine to a solo cluster as a worker node.
#
#   cluster/join.sh HEAD_IP:6379 [--num-gpus N] [--num-cpus N]
#
# The head runs `solo up` (or cluster/head.sh, under Ray's launcher: cluster/onprem.yaml).
# Before: on this machine, `make install` in a checkout of the same commit as the head; copy the
# head's token (~/.ray/auth_token on the head) to ~/.ray/auth_token here; mount the artifact store
# at the same path as on the head and point SOLO_HOME at it (checkpoints must be seen by every node).
# Stop with: .venv/bin/ray stop
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: cluster/join.sh HEAD_IP:PORT [ray start options, e.g. --num-gpus 1]" >&2; exit 2
fi
head=$1; shift
cd "$(dirname "$0")/.."
if [ ! -s "$HOME/.ray/auth_token" ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  echo "no Ray token here: copy ~/.ray/auth_token from the head to ~/.ray/auth_token on this machine" >&2; exit 2
fi
export RAY_AUTH_MODE=token
export PATH="$PWD/.venv/bin:$PATH"
eval "$(.venv/bin/python -c 'from solo.runtime import worker_env; import shlex
for k, v in worker_env().items(): print(f"export {k}={shlex.quote(v)}")')"
exec .venv/bin/ray start --address="$head" --disable-usage-stats "$@"
