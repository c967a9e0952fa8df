#!/usr/bin/env bash
# Gets a fresh machine its first Baton agent: runs the one-shot agent (`baton-node --once`),
# or installs the binary and a systemd unit for a permanent one. See docs/operations.md,
# "Bootstrapping a new machine".
set -euo pipefail

prog=$(basename "$0")

usage() {
    cat <<EOF
usage: $prog --binary PATH --trust NMS_PEER_ID [options] [-- BATON_NODE_ARGS...]

Gets this machine its first Baton agent.

  (default)          run the one-shot agent, baton-node --once: it joins, receives,
                     installs and relays one campaign, then exits (status 0 only if it
                     installed), leaving only the installed package in DATA_DIR/packages
  --permanent        instead install the binary and a systemd unit for a permanent agent
                     (baton-node.service), and (re)start it

  --binary PATH      the baton-node binary for this machine (required)
  --trust ID         the NMS's peer id, printed by baton-nms at start (required)
  --data-dir DIR     the agent's data directory (default /var/lib/baton-node)
  --keep-identity    one-shot: keep the identity in DATA_DIR, so that a permanent agent
                     started later there has the same peer id
  --timeout DURATION one-shot: give up after this long (default 1h; 90s, 30m, 2h)
  --bin-dir DIR      permanent: where to install baton-node (default /usr/local/bin)
  --unit-dir DIR     permanent: where to write the unit (default /etc/systemd/system)
  --no-start         permanent: write the unit, do not run systemctl
  -h, --help         this text

Arguments after -- go to baton-node as they are, e.g.
  $prog --binary ./baton-node --trust 12D3KooW... -- --install-cmd 'tar -xzf "\$BATON_PACKAGE" -C /opt/frob' --tag lab
EOF
}

die() {
    echo "$prog: $*" >&2
    exit 2
}

binary= trust= data_dir=/var/lib/baton-node keep_identity= timeout=
permanent= bin_dir=/usr/local/bin unit_dir=/etc/systemd/system no_start=
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --binary | --trust | --data-dir | --timeout | --bin-dir | --unit-dir)
            [ $# -ge 2 ] || die "$1 needs a value (see --help)"
            case "$1" in
                --binary) binary=$2 ;;
                --trust) trust=$2 ;;
                --data-dir) data_dir=$2 ;;
                --timeout) timeout=$2 ;;
                --bin-dir) bin_dir=$2 ;;
                --unit-dir) unit_dir=$2 ;;
            esac
            shift 2
            ;;
        --keep-identity) keep_identity=1; shift ;;
        --permanent) permanent=1; shift ;;
        --no-start) no_start=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) usage >&2; die "unknown argument \`$1\`" ;;
    esac
done

[ -n "$binary" ] || { usage >&2; die "--binary is required: the baton-node binary for this machine"; }
[ -n "$trust" ] || { usage >&2; die "--trust is required: the NMS's peer id (baton-nms prints it at start)"; }
[[ "$trust" =~ ^[1-9A-HJ-NP-Za-km-z]{40,}$ ]] \
    || die "--trust \`$trust\` is not a peer id (they look like 12D3KooW..., printed by baton-nms at start)"
if [ -n "$permanent" ] && { [ -n "$keep_identity" ] || [ -n "$timeout" ]; }; then
    die "--keep-identity and --timeout are for the one-shot agent, not with --permanent"
fi
if [ -z "$permanent" ] && { [ -n "$no_start" ] || [ "$bin_dir" != /usr/local/bin ] || [ "$unit_dir" != /etc/systemd/system ]; }; then
    die "--no-start, --bin-dir and --unit-dir are for --permanent"
fi

# the binary: a file, executable, built for this machine, and a baton-node
[ -f "$binary" ] || die "$binary does not exist or is not a file"
[ -x "$binary" ] || die "$binary is not executable: chmod +x $binary"
if ! version=$("$binary" --version 2>&1); then
    die "$binary does not run on this machine ($(uname -s) $(uname -m)): ${version:-no output}; use the baton-node built for $(uname -m)"
fi
version=${version%%$'\n'*}
case "$version" in
    baton-node*) ;;
    *) die "$binary is not baton-node (its --version says: $version)" ;;
esac
echo "$prog: $version on $(uname -m), trusting NMS $trust"

if [ -z "$permanent" ]; then
    args=(--once --data-dir "$data_dir" --trust "$trust")
    [ -z "$keep_identity" ] || args+=(--keep-identity)
    [ -z "$timeout" ] || args+=(--once-timeout "$timeout")
    # exec: the agent's status is this script's, and signals reach it directly
    exec "$binary" "${args[@]}" "${extra[@]}"
fi

# a word of the unit's ExecStart, quoted for systemd where needed
unit_word() {
    local w=$1
    if [[ "$w" =~ ^[A-Za-z0-9_./:=@+,-]+$ ]]; then
        printf '%s' "$w"
    else
        w=${w//\\/\\\\}
        w=${w//\"/\\\"}
        w=${w//%/%%}
        w=${w//\$/\$\$}
        printf '"%s"' "$w"
    fi
}

target="$bin_dir/baton-node"
exec_start=$(unit_word "$target")
for w in --data-dir "$data_dir" --trust "$trust" "${extra[@]}"; do
    exec_start+=" $(unit_word "$w")"
done

for d in "$bin_dir" "$unit_dir"; do
    { mkdir -p "$d" 2>/dev/null && [ -w "$d" ]; } \
        || die "cannot write to $d: run this as root (or give --bin-dir and --unit-dir)"
done
install -m 0755 "$binary" "$target.new"
mv -f "$target.new" "$target"
unit="$unit_dir/baton-node.service"
cat >"$unit.new" <<EOF
[Unit]
Description=Baton node agent: receives, verifies, installs and relays packages
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$exec_start
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM

[Install]
WantedBy=multi-user.target
EOF
mv -f "$unit.new" "$unit"
echo "$prog: installed $target and $unit"

if [ -n "$no_start" ]; then
    echo "$prog: start it with: systemctl daemon-reload && systemctl enable baton-node.service && systemctl restart baton-node.service"
    exit 0
fi
command -v systemctl >/dev/null \
    || die "systemctl not found: start $target with the arguments in $unit by this machine's init system"
systemctl daemon-reload
systemctl enable baton-node.service
# restart: a running agent (an earlier bootstrap) picks up the new binary and arguments
systemctl restart baton-node.service
echo "$prog: baton-node.service is running; its log: journalctl -u baton-node"
