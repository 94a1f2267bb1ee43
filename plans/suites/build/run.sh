#!/bin/sh
# Pretends to build, and leaves a build manifest as an artifact.
set -eu
echo "building for ${BATCHCTL_STAGING:-no staging} on ${BATCHCTL_MACHINE:-?}"
printf 'staging=%s\nattempt=%s\n' "${BATCHCTL_STAGING:-}" "${BATCHCTL_ATTEMPT:-}" > "$BATCHCTL_ARTIFACTS_DIR/build-manifest.txt"
echo "build ok"
