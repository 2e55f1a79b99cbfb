#!/bin/sh
# A plugin that looks around its sandbox, then reaches for things it was not given. Run it with:
#   target/x86_64-unknown-linux-gnu/release/stockade run --policy policies/profiles/untrusted-default.toml -- examples/look-around.sh
# The untrusted profile enforces with a threshold of one violation: the first forbidden attempt
# (/etc/shadow, which the sandbox's root does not even contain) ends the plugin, every process
# of it, and Stockade prints the violation report. Under a monitor-mode policy the script runs to
# its end and every attempt appears in the report (and, with --events FILE, as JSON lines).
echo "I am uid $(id -u), gid $(id -g)"
echo "processes I can see: $(ls /proc | grep -c '^[0-9]')"
echo "network interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
printf 'write /tmp/note: '; echo "scratch space" > /tmp/note && cat /tmp/note
printf 'read /etc/shadow: '; cat /etc/shadow 2>&1 | head -n 1
printf 'write /usr/bin/evil: '; (echo x > /usr/bin/evil) 2>&1 | sed 's/.*: //'
printf 'run a binary I wrote: '; cp /usr/bin/true /tmp/mine && chmod +x /tmp/mine && { /tmp/mine 2>&1 || true; } | sed 's/.*: //'
echo "still here"
