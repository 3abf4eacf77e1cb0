# The action's first instruction already meets the rules; then it tries to remove them.
if (echo > /dev/tcp/198.51.100.2/5432) 2>/dev/null; then echo "first: LEAK"; else echo "first: refused"; fi
if nft flush ruleset 2>/dev/null; then echo "flush: done"; else echo "flush: denied"; fi
if ip link set tap0 down 2>/dev/null; then echo "link: done"; else echo "link: denied"; fi
if ip route del default 2>/dev/null; then echo "route: done"; else echo "route: denied"; fi
if unshare -rn true 2>/dev/null; then echo "netns: done"; else echo "netns: denied"; fi
if (echo > /dev/tcp/198.51.100.2/5432) 2>/dev/null; then echo "after: LEAK"; else echo "after: refused"; fi
exec 3<>/dev/tcp/203.0.113.10/80 && read -r line <&3 && echo "web: $line"
