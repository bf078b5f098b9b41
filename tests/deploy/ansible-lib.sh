# shellcheck shell=bash
# Helpers for tests/deploy/run-ansible: an image with SSH and Python (what
# Ansible needs on a managed host), and several systemd-nspawn containers on
# one bridge. Sourced after lib.sh, not run.

ANSIBLE_IMAGE_VERSION=1
# Not matched by lib.sh's "image-*" clean-up, so both images stay cached.
ANSIBLE_IMAGE_DIR="$STATE_DIR/ansible-image-$SUITE-v$ANSIBLE_IMAGE_VERSION"

# Builds the managed-host image once: minbase plus sshd, python3 and
# python3-apt (Ansible's apt module); later runs reuse it.
ensure_ansible_image() {
    if [ -f "$ANSIBLE_IMAGE_DIR/.etcd-rs-image-complete" ]; then
        return 0
    fi
    local tmp="$ANSIBLE_IMAGE_DIR.tmp" mirror old
    for old in "$STATE_DIR"/ansible-image-*; do
        [ -e "$old" ] && [ "$old" != "$ANSIBLE_IMAGE_DIR" ] && rm -rf "$old"
    done
    mirror=$(host_mirror)
    rm -rf "$tmp"
    mkdir -p "$STATE_DIR"
    log "building the $SUITE Ansible image from $mirror (once; cached in $ANSIBLE_IMAGE_DIR)"
    debootstrap_minbase "$tmp" debootstrap-ansible.log \
        systemd,systemd-sysv,dbus,iproute2,procps,openssh-server,python3,python3-apt,ca-certificates \
        "$mirror" || return 1
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
    chroot "$tmp" passwd -d root >/dev/null
    # Root logs in with the run's key only.
    printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
        >"$tmp/etc/ssh/sshd_config.d/etcd-rs-test.conf"
    mkdir -p "$tmp/var/log/journal"
    touch "$tmp/.etcd-rs-image-complete"
    mv "$tmp" "$ANSIBLE_IMAGE_DIR"
}

# Per-container state, indexed by container number (1, 2, ...).
declare -A CT_NSPAWN_PID=() CT_SYSTEMD_PID=() CT_NAME=()

# boot_container N NAME IP: overlays the image, writes the network, host name,
# apt source and authorized key, and boots it on $BRIDGE. Sets CT_*[N].
boot_container() {
    local n=$1 name=$2 ip=$3
    local dir="$RUN_DIR/ct$n" root="$RUN_DIR/ct$n/root"
    mkdir -p "$dir/upper" "$dir/work" "$root"
    mount -t overlay overlay -o "lowerdir=$ANSIBLE_IMAGE_DIR,upperdir=$dir/upper,workdir=$dir/work" "$root" ||
        return 1
    MOUNTS+=("$root")
    CT_NAME[$n]=$name
    echo "$name" >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n%s\t%s\n' "$ip" "$name" >"$root/etc/hosts"
    mkdir -p "$root/etc/systemd/network" "$root/root/.ssh"
    printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' "$ip" \
        >"$root/etc/systemd/network/10-host0.network"
    ln -sf /lib/systemd/system/systemd-networkd.service \
        "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    install -m 0600 "$RUN_DIR/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
    chmod 0700 "$root/root/.ssh"
    local d
    for d in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
        [ -d "$d" ] && mkdir -p "$d/machine-$name"
    done
    (
        for d in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
            [ -d "$d/machine-$name" ] && echo "$BASHPID" >"$d/machine-$name/cgroup.procs"
        done
        SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec systemd-nspawn -q -D "$root" -M "$name" --boot \
            --register=no --keep-unit --console=pipe --network-bridge="$BRIDGE" </dev/null
    ) >"$dir/nspawn.log" 2>&1 &
    CT_NSPAWN_PID[$n]=$!
}

# container_systemd_pid N: the PID of container N's systemd (prints it).
container_systemd_pid() {
    local p
    for p in $(pgrep -P "${CT_NSPAWN_PID[$1]}"); do
        if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = systemd ]; then
            CT_SYSTEMD_PID[$1]=$p
            echo "$p"
            return 0
        fi
    done
    return 1
}

# ctn N COMMAND...: runs a command inside container N.
ctn() {
    local n=$1
    shift
    CT_PID=${CT_SYSTEMD_PID[$n]} ct "$@"
}

# ssh_ready IP: root can log in with the run's key.
ssh_ready() {
    ssh -i "$RUN_DIR/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 -o LogLevel=ERROR "root@$1" true
}

# stop_container N: powers container N off and removes its cgroups.
stop_container() {
    local n=$1 pid=${CT_NSPAWN_PID[$1]:-}
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    local d name=${CT_NAME[$n]:-}
    [ -n "$name" ] || return 0
    for d in /sys/fs/cgroup/unified/machine-"$name" /sys/fs/cgroup/systemd/machine-"$name"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    return 0
}
