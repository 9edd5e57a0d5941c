#!/bin/sh
# An --import-prefix for control-plane tests: the node's image store is slow, then "imports".
# It records each call (in $LPM_TEST_IMPORT_LOG, when set), sleeps, and exits 0 WITHOUT running
# the skopeo command it was given: the synthetic archives of the kubelet stand-in are not real
# CRIU dumps, and there is no runtime to restore them, so there is nothing to import them into.
# What the tests check is the agent's bookkeeping around a slow import, not the import itself.
if [ -n "$LPM_TEST_IMPORT_LOG" ]; then
    echo "$*" >> "$LPM_TEST_IMPORT_LOG"
fi
sleep "${LPM_TEST_IMPORT_SECONDS:-3}"
exit 0
