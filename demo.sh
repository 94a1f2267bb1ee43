#!/bin/sh
# `make demo`: run the example plan on this machine and show what came back.
set -eu
batchctl=${1:-batchctl}
staging="demo-$(date -u +%Y%m%dT%H%M%S)"

echo "== validate the plan (writes nothing)"
"$batchctl" run plans/example.yaml --staging "$staging" --dry-run
echo
echo "== run it to the end"
"$batchctl" run plans/example.yaml --staging "$staging" --wait
batch_id=$("$batchctl" list --jq '.data.batches[0].id')
echo
echo "== the log of item 'unit'"
"$batchctl" logs "$batch_id" unit
echo
echo "== artifacts the runs wrote"
"$batchctl" status "$batch_id" --json | python3 -c '
import json, os, sys
for item in json.load(sys.stdin)["data"]["batch"]["items"]:
    folder = item["run"]["artifacts_path"]
    label = item["name"]
    for name in sorted(os.listdir(folder)):
        print(f"{label:8} {os.path.join(folder, name)}")
'
echo
echo "== the fleet"
"$batchctl" machines
echo
echo "Re-run the same command with --staging $staging and it only reports the finished batch."
