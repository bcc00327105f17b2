# VMM driver: QEMU (the reference), driven over QMP on L1 loopback.
QMP_PORT=4444
L2_CMDLINE="console=ttyS0 quiet memhp_default_state=online_movable"
QEMU_MEM_OPTS=dynamic-memslots=on
QEMU_SMP=1
QEMU_MEMORY=512M,maxmem=80G
# More QEMU options (e.g. NUMA nodes, a second device); word-split on purpose.
QEMU_EXTRA=
# The memory backend behind mem0 (vhost-user needs memfd with share=on).
QEMU_VMEM_OBJECT=memory-backend-ram,id=vmem0,size=64G,reserve=off

# A file: run QEMU as a child and write its exit status there (a migration source quits).
QEMU_RC=

vmm_launch() {
    if [ -n "$QEMU_RC" ]; then
        (QEMU_RC=; vmm_launch)
        echo "$?" > "$QEMU_RC"
        return
    fi
    exec qemu-system-x86_64 -nodefaults -display none -accel kvm -cpu host \
        -machine pc,smm=off -smp "$QEMU_SMP" -m "$QEMU_MEMORY" \
        -object "$QEMU_VMEM_OBJECT" \
        -device "virtio-mem-pci,id=mem0,memdev=vmem0,requested-size=$REQUESTED,$QEMU_MEM_OPTS" \
        $QEMU_EXTRA -serial stdio -qmp "tcp:127.0.0.1:$QMP_PORT,server=on,wait=off" \
        -kernel /l2/vmlinuz -initrd /l2/initramfs.cpio -append "$L2_CMDLINE"
}

# vmm_pid: the QEMU whose QMP port is QMP_PORT (a migration runs two).
vmm_pid() {
    for p in $(pidof qemu-system-x86_64); do
        tr '\0' ' ' < "/proc/$p/cmdline" | grep -q "tcp:127.0.0.1:$QMP_PORT,server" && echo "$p"
    done
}

qmp_reader() {
    while IFS= read -r l; do echo "${l%"$CR"}" >> /tmp/qmp.out; done
}

qmp_open() {
    [ -e /tmp/qmpin ] && return 0
    i=0
    until grep -q ":$(printf %04X $QMP_PORT) 00000000:0000 0A" /proc/net/tcp; do
        i=$((i + 1)); [ $i -gt 1200 ] && { ev error "QMP port never opened"; return 1; }
        sleep 0.05
    done
    : > /tmp/qmp.out
    mkfifo /tmp/qmpin
    nc 127.0.0.1 "$QMP_PORT" < /tmp/qmpin | qmp_reader &
    exec 4> /tmp/qmpin
    qmp '{"execute":"qmp_capabilities"}'
}

qmp_replies() { grep -c '^{"return"\|^{"error"' /tmp/qmp.out; }

# qmp JSON: sends one command; its reply ends up in QMP_REPLY; fails on an error reply.
qmp() {
    before=$(qmp_replies)
    echo "$1" >&4
    i=0
    while [ "$(qmp_replies)" -le "$before" ]; do
        i=$((i + 1)); [ $i -gt 1500 ] && { ev error "no QMP reply to $1"; return 1; }
        sleep 0.02
    done
    QMP_REPLY=$(grep '^{"return"\|^{"error"' /tmp/qmp.out | sed -n "$((before + 1))p")
    case "$QMP_REPLY" in '{"error"'*) return 1 ;; esac
}

vmm_resize() {
    qmp_open || return 1
    if qmp "{\"execute\":\"qom-set\",\"arguments\":{\"path\":\"mem0\",\"property\":\"requested-size\",\"value\":$1}}"; then
        ev resize_ok "$1"
    else
        ev resize_error "$1" "$QMP_REPLY"
        return 1
    fi
}

vmm_status() {
    qmp_open || return 1
    qmp '{"execute":"query-memory-devices"}'
    ev qemu_memdev "$1" "$QMP_REPLY"
    qmp '{"execute":"human-monitor-command","arguments":{"command-line":"info mtree"}}'
    case "$QEMU_MEM_OPTS" in
        # One static memslot covers the whole region: there is no per-slot mapping to count.
        *dynamic-memslots=off*) n=static ;;
        *) n=$(echo "$QMP_REPLY" | grep -o 'memslot-[0-9]*' | sort -u | wc -l) ;;
    esac
    ev qemu_memslots "$1" "$n"
}

# vmm_resize_dev ID BYTES: resizes device ID (no waiting).
vmm_resize_dev() {
    qmp_open || return 1
    if qmp "{\"execute\":\"qom-set\",\"arguments\":{\"path\":\"$1\",\"property\":\"requested-size\",\"value\":$2}}"; then
        ev resize_ok_dev "$1" "$2"
    else
        ev resize_error "$2" "$1: $QMP_REPLY"
        return 1
    fi
}

# vmm_snapshot DIR: stops the VM, then migrates it to DIR/vm with the mapped-ram capability
# (a sparse file, each RAM page at a fixed offset; QEMU ≥ 9.0). SNAPSHOT_MS: the migration.
vmm_snapshot() {
    qmp_open || return 1
    mkdir -p "$1"
    qmp '{"execute":"stop"}' || { ev error "stop: $QMP_REPLY"; return 1; }
    qmp '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"mapped-ram","state":true}]}}' \
        || { ev error "mapped-ram: $QMP_REPLY"; return 1; }
    ms; t0=$MS
    qmp "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"file:$1/vm\"}}" \
        || { ev error "migrate: $QMP_REPLY"; return 1; }
    qemu_wait_status query-migrate '"status": *"completed"' '"status": *"failed"' 6000 || return 1
    ms; SNAPSHOT_MS=$((MS - t0))
}

# qemu_wait_status COMMAND DONE_RE FAIL_RE TENTHS: polls COMMAND until its reply matches DONE_RE.
qemu_wait_status() {
    i=0
    while :; do
        qmp "{\"execute\":\"$1\"}" || { ev error "$1: $QMP_REPLY"; return 1; }
        echo "$QMP_REPLY" | grep -q "$2" && return 0
        echo "$QMP_REPLY" | grep -q "$3" && { ev error "$1: $QMP_REPLY"; return 1; }
        i=$((i + 1)); [ $i -gt "$4" ] && { ev error "$1 never matched $2: $QMP_REPLY"; return 1; }
        sleep 0.05
    done
}

# vmm_restore DIR: starts a new QEMU waiting for an incoming migration, loads DIR/vm into it
# (mapped-ram) and lets it run.
vmm_restore() {
    QEMU_EXTRA="$QEMU_EXTRA -incoming defer"
    vmm_start || return 1
    qmp_open || return 1
    qmp '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"mapped-ram","state":true}]}}' \
        || { ev error "mapped-ram: $QMP_REPLY"; return 1; }
    qmp "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"file:$1/vm\"}}" \
        || { ev error "migrate-incoming: $QMP_REPLY"; return 1; }
}

# vmm_running: whether the VM's vCPUs run. A VM saved stopped arrives paused: once the
# incoming migration is done (no longer "inmigrate"), it is continued, as `hotmem --restore
# --resume` does.
vmm_running() {
    qmp '{"execute":"query-status"}' || return 1
    case "$QMP_REPLY" in
        *'"status": "running"'* | *'"status":"running"'*) return 0 ;;
        *inmigrate*) return 1 ;;
        *'"status": "paused"'* | *'"status":"paused"'* | *postmigrate*)
            qmp '{"execute":"cont"}' || ev error "cont: $QMP_REPLY"
            return 1 ;;
    esac
    return 1
}

# vmm_forget: the VMM was killed; forget its QMP connection.
vmm_forget() {
    exec 4>&-
    rm -f /tmp/qmpin
}

# Live migration to a second QEMU in the same L1 (TCP loopback). Destination N listens for the
# migration on QEMU_MIG_URI, has its QMP on port 4450+N, its console on fd N+5 (fd 4 is QMP)
# and fifo /tmp/l2in-N, its exit status in /tmp/rc-N.
QEMU_MIG_URI=tcp:127.0.0.1:4460
# QEMU caps migration at 128 MiB/s by default; hotmem has no cap: lift QEMU's (10 GiB/s).
QEMU_MIG_BANDWIDTH=10737418240

# qemu_dst_start N: starts destination N with the source's machine and device options.
qemu_dst_start() {
    n=$1
    rm -f "/tmp/l2in-$n" "/tmp/vmmerr-$n" "/tmp/rc-$n"
    mkfifo "/tmp/l2in-$n" "/tmp/vmmerr-$n"
    relay_vmm_err < "/tmp/vmmerr-$n" &
    { (QMP_PORT=$((4450 + n)); QEMU_RC=; QEMU_EXTRA="$QEMU_EXTRA -incoming $QEMU_MIG_URI"; vmm_launch)
      echo "$?" > "/tmp/rc-$n"; } < "/tmp/l2in-$n" 2> "/tmp/vmmerr-$n" | relay_l2 &
    eval "exec $((n + 5))> /tmp/l2in-$n"
    ev dst_started "$n" "qemu -incoming $QEMU_MIG_URI"
    # Listening: its QMP port and, opened later in its start-up, the migration port.
    for port in $((4450 + n)) "${QEMU_MIG_URI##*:}"; do
        i=0
        until grep -q ":$(printf %04X "$port") 00000000:0000 0A" /proc/net/tcp; do
            i=$((i + 1)); [ $i -gt 600 ] && { ev error "destination $n never listened on port $port"; return 1; }
            sleep 0.1
        done
    done
    ev dst_listening "$n"
}

# qemu_migrate_to N: migrates to destination N (downtime limit 300 ms), waits for completion,
# records query-migrate (QEMU_MIGRATION), quits the source, switches console and QMP to N.
qemu_migrate_to() {
    qmp_open || return 1
    qmp "{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"downtime-limit\":300,\"max-bandwidth\":$QEMU_MIG_BANDWIDTH}}" \
        || { ev error "migrate-set-parameters: $QMP_REPLY"; return 1; }
    qmp "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"$QEMU_MIG_URI\"}}" \
        || { ev error "migration to $1 failed: $QMP_REPLY"; return 1; }
    # Up to 10 minutes: a migration that does not converge fails the scenario.
    qemu_wait_status query-migrate '"status": *"completed"' '"status": *"failed"\|"status": *"cancelled"' 6000 || return 1
    QEMU_MIGRATION=$QMP_REPLY
    ev qemu_migration "$1" "$QEMU_MIGRATION"
    ev migrate_ok "$1" "$QEMU_MIGRATION"
    qmp '{"execute":"query-status"}'
    ev source_status "$QMP_REPLY"
    qmp '{"execute":"quit"}' || ev error "quit: $QMP_REPLY"
    i=0
    while [ ! -f "$QEMU_RC" ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
    ev source_rc "$(cat "$QEMU_RC" 2>/dev/null || echo missing)"
    vmm_forget
    eval "exec 3>&$(($1 + 5))"
    QMP_PORT=$((4450 + $1))
    QEMU_RC=/tmp/rc-$1
    qmp_open || return 1
    qemu_wait_status query-status '"status": *"running"' '"status": *"\(internal-error\|guest-panicked\|shutdown\)"' 600 || return 1
    ev vmm_migrated "$1"
}
