#!/bin/sh
# Reads dotenv parameters from stdin, calls curl, prints one JSON object.
set -e
url="" method="GET" body="" timeout="10" auth_token=""
hdrs=$(mktemp)
trap 'rm -f "$hdrs" "$out"' EXIT
while IFS= read -r line; do
    [ -z "$line" ] && continue
    key="${line%%=*}" value="${line#*=}"
    case "$value" in \'*\') value="${value#\'}"; value="${value%\'}" ;; esac
    case "$key" in
        url) url="$value" ;; method) method="$value" ;; body) body="$value" ;;
        timeout) timeout="$value" ;; auth_token) auth_token="$value" ;;
        headers.*) printf '%s: %s\n' "${key#headers.}" "$value" >> "$hdrs" ;;
    esac
done
out=$(mktemp)
set -- -s -o "$out" -w '%{http_code}' -X "$method" --max-time "$timeout"
while IFS= read -r h; do set -- "$@" -H "$h"; done < "$hdrs"
[ -n "$auth_token" ] && set -- "$@" -H "Authorization: Bearer $auth_token"
[ -n "$body" ] && set -- "$@" -d "$body"
set +e
code=$(curl "$@" "$url")
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    printf '{"status_code":0,"body":"","success":false,"error":"curl error code %s"}\n' "$rc"
    exit 1
fi
esc=$(sed 's/\\/\\\\/g; s/"/\\"/g' "$out" | awk '{printf "%s\\n", $0}' | sed 's/\\n$//')
ok=false
[ "$code" -ge 200 ] && [ "$code" -lt 300 ] && ok=true
printf '{"status_code":%d,"body":"%s","success":%s,"token_echo":"%s"}\n' "$code" "$esc" "$ok" "$auth_token"
