#!/bin/sh
# Packages what the earlier items proved good.
set -eu
echo "packaging ${BATCHCTL_STAGING:-unlabelled}"
tar -czf "$BATCHCTL_ARTIFACTS_DIR/package.tar.gz" run.sh
echo "package written"
