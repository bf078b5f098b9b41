# Helpers for tests/deploy/run-systemd: a Debian image, a systemd-nspawn
# container on a private bridge, and PASS/FAIL bookkeeping. Sourced, not run.

STATE_DIR=${STATE_DIR:-/var/tmp/etcd-rs-deploy}
SUITE=bookworm
# Bump IMAGE_VERSION when the image recipe changes; stale images are removed.
IMAGE_VERSION=2
IMAGE_DIR="$STATE_DIR/image-$SUITE-v$IMAGE_VERSION"

FAILED=0
PASSED=0
FAILED_NAMES=()

log() { printf '    %s\n' "$*" >&2; }

pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS %s\n' "$1"
}

fail() {
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
    printf 'FAIL %s\n' "$1"
    shift
    local line
    for line in "$@"; do printf '     %s\n' "$line"; done
}

# check NAME COMMAND...: PASS when COMMAND succeeds. The command's output is
# shown only when it fails.
check() {
    local name=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ]; then
        pass "$name"
    else
        fail "$name" "(exit $rc)"
        printf '%s\n' "$out" | tail -n 40 | sed 's/^/     | /'
    fi
    return "$rc"
}

# wait_until SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    while :; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
}

# The Debian mirror the host's apt uses.
host_mirror() {
    local m=""
    if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
        m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources)
    fi
    if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
        m=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
    fi
    printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

# debootstrap_minbase DIR LOG PACKAGES MIRROR: a minbase $SUITE tree in DIR
# with PACKAGES (comma-separated) that only reaches what the test serves (no
# apt sources, no package lists), with an empty machine-id and the hostname
# etcd-rs-test. debootstrap's output goes to $STATE_DIR/LOG.
debootstrap_minbase() {
    local dir=$1 logf=$STATE_DIR/$2 pkgs=$3 mirror=$4
    debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$dir" "$mirror" >"$logf" 2>&1 || {
        tail -n 30 "$logf" >&2
        return 1
    }
    rm -f "$dir/etc/apt/sources.list"
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/*
    : >"$dir/etc/machine-id"
    echo etcd-rs-test >"$dir/etc/hostname"
}

# Builds the minimal Debian image once; later runs reuse it.
ensure_image() {
    if [ -f "$IMAGE_DIR/.etcd-rs-image-complete" ]; then
        return 0
    fi
    local tmp="$IMAGE_DIR.tmp" mirror old
    for old in "$STATE_DIR"/image-*; do
        [ -e "$old" ] && [ "$old" != "$IMAGE_DIR" ] && rm -rf "$old"
    done
    mirror=$(host_mirror)
    rm -rf "$tmp"
    mkdir -p "$STATE_DIR"
    log "building the $SUITE image from $mirror (once; cached in $IMAGE_DIR)"
    # No adduser: the package must create its user with systemd-sysusers.
    # man-db lets systemd-analyze verify check Documentation=man:etcd(1).
    # The container only reaches the host's local repository.
    debootstrap_minbase "$tmp" debootstrap.log systemd,systemd-sysv,dbus,iproute2,procps,man-db \
        "$mirror" || return 1
    # As on an installed system (debootstrap writes none).
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tetcd-rs-test\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$tmp/etc/hosts"
    # Root logs in without a password on the (unused) console.
    chroot "$tmp" passwd -d root >/dev/null
    mkdir -p "$tmp/var/log/journal"
    touch "$tmp/.etcd-rs-image-complete"
    mv "$tmp" "$IMAGE_DIR"
}

# Runs a command inside the booted container.
ct() {
    nsenter -t "$CT_PID" -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 ETCDCTL_API=3 "$@"
}

# Runs a shell snippet inside the container.
ct_sh() { ct sh -c "$1"; }

# systemctl show -p PROP --value UNIT inside the container.
prop() { ct systemctl show -p "$2" --value "$1"; }
