#!/bin/sh
# Stockade's main job, end to end: the example plugins signed by a publisher key the daemon pins,
# a daemon hosting them, a call into each, a misbehaving plugin auto-unloaded with its violation
# report, a tampered package refused, and a clean stop. Run as root after
# `cargo xtask setup && cargo build --release` (README.md):
#   examples/daemon-demo.sh
# Everything it makes lives in one temporary directory (socket, state, keys, copies of the
# packages), removed at the end; the daemon is stopped with SIGTERM, which stops every plugin first.
set -eu
cd "$(dirname "$0")/.."
bin=${STOCKADE_BIN:-target/x86_64-unknown-linux-gnu/release}
for b in stockade stockade-daemon stockade-shim echo-rust; do
    if [ ! -x "$bin/$b" ]; then
        echo "daemon-demo: $bin/$b is missing" >&2
        echo "  hint: build first: cargo xtask setup && cargo build --release" >&2
        exit 2
    fi
done
if [ "$(id -u)" != 0 ]; then
    echo "daemon-demo: needs root: the daemon maps user ids and creates cgroups for each sandbox" >&2
    echo "  hint: run it with sudo" >&2
    exit 2
fi

# Below /tmp, which every uid may traverse: each plugin's unprivileged uid must reach its package.
work=$(mktemp -d /tmp/stockade-demo.XXXXXX)
chmod 755 "$work"
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid"
        wait "$daemon_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

mkdir -p "$work/plugins"
for p in echo-rust echo-python nosy; do
    cp -r "examples/plugins/$p" "$work/plugins/$p"
done
rm -rf "$work/plugins/echo-rust/src" "$work/plugins/echo-rust/Cargo.toml"
cp "$bin/echo-rust" "$work/plugins/echo-rust/echo-rust"
chmod -R go+rX "$work/plugins"
# STOCKADE_DEMO_INIT_TIMEOUT (the tests, under the VM runner's emulation, where a Python start can
# take longer than the default 10 s): each plugin's initialize may take that long.
if [ -n "${STOCKADE_DEMO_INIT_TIMEOUT:-}" ]; then
    for m in "$work"/plugins/*/plugin.toml; do
        if grep -q '^\[lifecycle\]' "$m"; then
            sed -i "/^\[lifecycle\]/a init_timeout = \"$STOCKADE_DEMO_INIT_TIMEOUT\"" "$m"
        else
            printf '\n[lifecycle]\ninit_timeout = "%s"\n' "$STOCKADE_DEMO_INIT_TIMEOUT" >>"$m"
        fi
    done
fi

export STOCKADE_SOCKET="$work/control.sock"
stockade() { "$bin/stockade" "$@"; }
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

mkdir "$work/keys"
say "stockade key generate demo-publisher --out $work/keys"
stockade key generate demo-publisher --out "$work/keys"
for p in echo-rust echo-python nosy; do
    say "stockade sign $work/plugins/$p --key $work/keys/demo-publisher.key"
    stockade sign "$work/plugins/$p" --key "$work/keys/demo-publisher.key"
done
say "stockade verify $work/plugins/echo-python --pubkey $work/keys/demo-publisher.pub"
stockade verify "$work/plugins/echo-python" --pubkey "$work/keys/demo-publisher.pub"

say "stockade daemon --plugins $work/plugins --pubkey $work/keys/demo-publisher.pub &"
"$bin/stockade" daemon --plugins "$work/plugins" --pubkey "$work/keys/demo-publisher.pub" \
    --state-dir "$work/state" 2>"$work/daemon.log" &
daemon_pid=$!
tries=0
until stockade plugin list >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 200 ] || ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "daemon-demo: the daemon did not start:" >&2
        cat "$work/daemon.log" >&2
        exit 1
    fi
    sleep 0.05
done
# The packages load at start; wait until all three are active.
tries=0
limit=200
[ -z "${STOCKADE_DEMO_INIT_TIMEOUT:-}" ] || limit=1200
until [ "$(stockade plugin list --json | grep -o '"state":"active"' | wc -l)" -ge 3 ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt "$limit" ]; then
        echo "daemon-demo: the plugins did not become active:" >&2
        stockade plugin list >&2
        cat "$work/daemon.log" >&2
        exit 1
    fi
    sleep 0.05
done

say "stockade plugin list"
stockade plugin list
say "stockade call echo-rust echo '{\"text\": \"hello from Rust\"}'"
stockade call echo-rust echo '{"text": "hello from Rust"}'
say "stockade call echo-python echo '{\"text\": \"hello from Python\"}'"
stockade call echo-python echo '{"text": "hello from Python"}'
say "stockade call echo-python shout '{}'   # not in its manifest: refused before the plugin sees it"
stockade call echo-python shout '{}' 2>&1 || true
say "stockade call nosy look '{}'           # reaches for /etc/shadow"
stockade call nosy look '{}' 2>&1 || true
tries=0
until stockade plugin status nosy --json | grep -q '"state":"quarantined"'; do
    tries=$((tries + 1))
    [ "$tries" -gt 100 ] && break
    sleep 0.05
done
say "stockade plugin status nosy"
stockade plugin status nosy
say "stockade events | grep report          # the violation report"
stockade events | grep '"type":"report"'
say "stockade plugin list"
stockade plugin list
cp -r "$work/plugins/echo-python" "$work/tampered"
printf '\n# one more line\n' >>"$work/tampered/main.py"
say "stockade plugin load $work/tampered      # echo-python with one line added after signing"
stockade plugin load "$work/tampered" 2>&1 || true
say "kill -TERM <daemon>                      # stops every plugin, then exits 0"
kill -TERM "$daemon_pid"
wait "$daemon_pid"
status=$?
daemon_pid=
echo "the daemon exited with status $status"
