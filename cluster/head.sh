#!/usr/bin/env bash
# Start this machine as the head of a solo cluster in the foreground of Ray's launcher.
#
#   cluster/head.sh [ray start options, e.g. --autoscaling-config=~/ray_bootstrap_config.yaml]
#
# What `solo up` does (GCS on port 6379, dashboard on 127.0.0.1 only, token authentication, the
# workers' environment), as plain `ray start --head` so that Ray's cluster launcher can pass its
# own options: under `ray up cluster/onprem.yaml` the head's autoscaler is what starts the workers.
# Jobs: `RAY_ADDRESS=http://127.0.0.1:8265 ray job submit …` on the head. Stop with: .venv/bin/ray stop
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token
export PATH="$PWD/.venv/bin:$PATH"
eval "$(.venv/bin/python -c 'from solo.runtime import worker_env; import shlex
for k, v in worker_env().items(): print(f"export {k}={shlex.quote(v)}")')"
exec .venv/bin/ray start --head --port=6379 --dashboard-host=127.0.0.1 --disable-usage-stats "$@"
