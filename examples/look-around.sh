#!/bin/sh
# A plugin that looks around its sandbox and tries a few forbidden things. Run it with:
#   target/x86_64-unknown-linux-gnu/release/stockade run --policy policies/profiles/untrusted-default.toml -- examples/look-around.sh
echo "I am: $(id)"
echo "processes I can see: $(ls /proc | grep -c '^[0-9]')"
echo "network interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
printf 'read /etc/shadow: '; cat /etc/shadow 2>&1 | head -n 1
printf 'write /usr/bin/evil: '; (echo x > /usr/bin/evil) 2>&1 | sed 's/.*: //'
printf 'write /tmp/note: '; echo "scratch space" > /tmp/note && cat /tmp/note
printf 'run a binary I wrote: '; cp /usr/bin/true /tmp/mine && chmod +x /tmp/mine && { /tmp/mine 2>&1 || true; } | sed 's/.*: //'
