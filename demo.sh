#!/bin/sh
# `make demo`: run the example plan on this machine and show what came back.
set -eu
batchctl=${1:-batchctl}
staging="demo-$(date -u +%Y%m%d)"
"$batchctl" run plans/example.yaml --staging "$staging" --dry-run
echo
"$batchctl" run plans/example.yaml --staging "$staging"
batch_id=$("$batchctl" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["batches"][0]["id"])')
echo
"$batchctl" status "$batch_id"
