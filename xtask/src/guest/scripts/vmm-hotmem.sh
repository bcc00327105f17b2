# VMM driver: hotmem (the VMM under test), driven with hotmem-ctl over its API socket.
API=/run/hotmem.sock
L2_CMDLINE="console=ttyS0 quiet memhp_default_state=online_movable"
HOTMEM_MEM_OPTS=
HOTMEM_CPUS=1
HOTMEM_MEMORY=512M
HOTMEM_MEM_SIZE=64G
# More hotmem options (e.g. a second --mem-device); word-split on purpose.
HOTMEM_EXTRA=
# A folder: run hotmem through hotmem-jail with this root, as uid/gid 1000.
HOTMEM_JAIL=
# hotmem's --seccomp (kill, log or off): from hm.seccomp= on L1's command line, else kill.
HOTMEM_SECCOMP=${HOTMEM_SECCOMP:-kill}

# Set to a snapshot directory to start from it instead of booting (with these options).
HOTMEM_RESTORE=
HOTMEM_RESTORE_OPTS=

vmm_launch() {
    if [ -n "$HOTMEM_RESTORE" ]; then
        exec hotmem --restore "$HOTMEM_RESTORE" $HOTMEM_RESTORE_OPTS --resume --serial stdio \
            --api-socket "$API" --seccomp "$HOTMEM_SECCOMP"
    fi
    set -- --kernel /l2/vmlinuz --initramfs /l2/initramfs.cpio --cmdline "$L2_CMDLINE" \
        --memory "$HOTMEM_MEMORY" --cpus "$HOTMEM_CPUS" --mem-device "id=mem0,size=$HOTMEM_MEM_SIZE,requested=$REQUESTED$HOTMEM_MEM_OPTS" \
        $HOTMEM_EXTRA --serial stdio --api-socket "$API" --seccomp "$HOTMEM_SECCOMP"
    if [ -n "$HOTMEM_RC" ]; then
        hotmem "$@"
        echo "$?" > "$HOTMEM_RC"
        return
    fi
    if [ -n "$HOTMEM_JAIL" ]; then
        exec hotmem-jail --jail "$HOTMEM_JAIL" --uid 1000 --gid 1000 -- "$@"
    fi
    exec hotmem "$@"
}

vmm_pid() { pidof hotmem; }

vmm_resize() {
    if out=$(hotmem-ctl --api-socket "$API" resize mem0 "$(size_arg "$1")" 2>&1); then
        ev resize_ok "$1"
    else
        ev resize_error "$1" "$(echo "$out" | tr '\n' ' ')"
        return 1
    fi
}

vmm_status() {
    out=$(hotmem-ctl --api-socket "$API" status --json 2>&1 | tr '\n' ' ')
    ev hotmem_status "$1" "$out"
}

# vmm_resize_dev ID BYTES: resizes device ID (no waiting).
vmm_resize_dev() {
    if out=$(hotmem-ctl --api-socket "$API" resize "$1" "$(size_arg "$2")" 2>&1); then
        ev resize_ok_dev "$1" "$2"
    else
        ev resize_error "$2" "$1: $(echo "$out" | tr '\n' ' ')"
        return 1
    fi
}

# vmm_snapshot DIR: pauses the VM, then writes its snapshot to DIR (SNAPSHOT_MS: how long the
# snapshot alone took, paused).
vmm_snapshot() {
    hotmem-ctl --api-socket "$API" pause > /dev/null 2>&1 || { ev error "pause failed"; return 1; }
    ms; t0=$MS
    if ! out=$(hotmem-ctl --api-socket "$API" snapshot "$1" 2>&1); then
        ev error "snapshot failed: $(echo "$out" | tr '\n' ' ')"
        return 1
    fi
    ms; SNAPSHOT_MS=$((MS - t0))
}

# vmm_restore DIR: starts a new VMM from the snapshot in DIR, running.
vmm_restore() {
    HOTMEM_RESTORE=$1
    HOTMEM_RESTORE_OPTS=
    vmm_start
}

# vmm_running: whether the VM's vCPUs run.
vmm_running() {
    hotmem-ctl --api-socket "$API" vm 2>/dev/null | grep -q '"state": *"running"'
}

# vmm_forget: the VMM was killed; forget its control connection.
vmm_forget() { rm -f "$API"; }
