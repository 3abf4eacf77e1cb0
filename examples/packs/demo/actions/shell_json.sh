#!/bin/sh
# Parameters arrive as one line of compact JSON on stdin; echo them back inside an object.
IFS= read -r params || true
[ -n "$params" ] || params=null
printf '{"ok": true, "params": %s}\n' "$params"
