# VMM driver: hotmem (the VMM under test), driven with hotmem-ctl over its API socket.
API=/run/hotmem.sock
L2_CMDLINE="console=ttyS0 quiet memhp_default_state=online_movable"
HOTMEM_MEM_OPTS=
HOTMEM_CPUS=1
# More hotmem options (e.g. a second --mem-device); word-split on purpose.
HOTMEM_EXTRA=

# Set to a snapshot directory to start from it instead of booting (with these options).
HOTMEM_RESTORE=
HOTMEM_RESTORE_OPTS=

vmm_launch() {
    if [ -n "$HOTMEM_RESTORE" ]; then
        exec hotmem --restore "$HOTMEM_RESTORE" $HOTMEM_RESTORE_OPTS --resume --serial stdio \
            --api-socket "$API"
    fi
    exec hotmem --kernel /l2/vmlinuz --initramfs /l2/initramfs.cpio --cmdline "$L2_CMDLINE" \
        --memory 512M --cpus "$HOTMEM_CPUS" --mem-device "id=mem0,size=64G,requested=$REQUESTED$HOTMEM_MEM_OPTS" \
        $HOTMEM_EXTRA --serial stdio --api-socket "$API"
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
