# Scenario host sides. Each leaves events and snapshots; the harness asserts on them.
# REQUESTED: bytes requested from the device; the VMM starts with it.
REQUESTED=$GiB

start_guest() { vmm_start && boot_guest 1; }

scenario_boot_plugged() {
    start_guest
}

scenario_grow_shrink() {
    start_guest || return
    resize_to $((4 * GiB)) || return
    snap grown
    gcmd zerofill "${FILL_MIB:-1536}"
    wait_ev 600 1 filled || return
    snap filled
    gcmd drop
    wait_ev 60 1 dropped || return
    resize_to $GiB || return
    sleep 2
    snap shrunk
}

scenario_to_zero() {
    start_guest || return
    resize_to 0 || return
    sleep 2
    snap zero
}

scenario_reboot() {
    start_guest || return
    resize_to $((2 * GiB)) || return
    snap before-reboot
    gcmd reboot
    boot_guest 2
}

scenario_bad_resize() {
    start_guest || return
    resize_to $((65 * GiB)) && ev error "resize above the region was accepted"
    resize_to $((GiB + MiB)) && ev error "resize to a non-multiple of the block size was accepted"
    sleep 3
    snap after-bad
}

scenario_data_intact() {
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 768
    wait_ev 600 1 filled || return
    resize_to $GiB || return
    gcmd verify
    wait_ev 300 1 verify || return
    resize_to $((3 * GiB)) || return
    gcmd verify
    wait_ev 300 2 verify || return
    snap end
}

scenario_legacy_guest() {
    # Linux 5.10 lacks VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE; QEMU then needs static memslots.
    QEMU_MEM_OPTS=unplugged-inaccessible=off,dynamic-memslots=off
    start_guest || return
    resize_to $((4 * GiB)) || return
    snap grown
    resize_to $GiB || return
    snap shrunk
}

# hotmem only: the event stream (hotmem-ctl events --follow) across a grow/shrink, starting
# with a guest whose virtio_mem driver is not loaded yet, plus a metrics sample.
scenario_events() {
    vmm_start || return
    # The VMM binds its API socket a moment after it starts: follow only once it is there.
    i=0
    while [ ! -S "$API" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    hotmem-ctl --api-socket "$API" events --follow > /tmp/events.ndjson 2> /tmp/events.err &
    EVENTS_PID=$!
    wait_ev 240 1 ready || return
    BASE_KIB=$(last_memtotal)
    ev guest_base_kib "$BASE_KIB"
    # 1 GiB requested, no driver: the VMM must report that the guest does not follow, and why.
    wait_event_line 90 '"event":"guest-not-following".*"reason":"driver-not-probed"' || return
    snap boot1-pre-driver
    gcmd go
    wait_ev 60 1 modules_loaded || return
    wait_mem 120 $(( BASE_KIB + REQUESTED / 1024 )) || return
    snap boot1-plugged
    # Paused, the guest cannot follow: a waiting resize must time out (504), then resume.
    ev vm_pause "$(hotmem-ctl --api-socket "$API" pause 2>&1)"
    if out=$(hotmem-ctl --api-socket "$API" resize mem0 2G --wait --timeout 3s 2>&1); then
        ev error "a waiting resize succeeded while the VM was paused: $out"
    else
        ev paused_resize_timed_out "$(echo "$out" | tr '\n' ' ')"
    fi
    ev vm_resume "$(hotmem-ctl --api-socket "$API" resume 2>&1)"
    REQUESTED=$((2 * GiB))
    wait_mem 120 $(( BASE_KIB + REQUESTED / 1024 )) || return
    resize_wait $((4 * GiB)) || return
    snap grown
    resize_wait $GiB || return
    sleep 1
    snap shrunk
    kill "$EVENTS_PID" 2>/dev/null
    while IFS= read -r l; do ev hotmem_event "$l"; done < /tmp/events.ndjson
    while IFS= read -r l; do ev events_stderr "$l"; done < /tmp/events.err
    hotmem-ctl --api-socket "$API" metrics > /tmp/metrics.txt 2>&1
    grep -v '^#' /tmp/metrics.txt | grep -v '_bucket{' | while IFS= read -r l; do ev hotmem_metric "$l"; done
}

# wait_event_line SECONDS PATTERN: waits until the captured event stream has a matching line.
wait_event_line() {
    end=$(( $(date +%s) + $1 ))
    while ! grep -q "$2" /tmp/events.ndjson; do
        if [ "$(date +%s)" -ge "$end" ]; then ev timeout "waiting for event $2"; return 1; fi
        vmm_alive || return 1
        sleep 0.5
    done
}

# resize_wait BYTES: hotmem-ctl resize --wait (answers once the guest plugged BYTES).
resize_wait() {
    ev resize_request "$1"
    if out=$(hotmem-ctl --api-socket "$API" resize mem0 "$(size_arg "$1")" --wait --timeout 180s 2>&1); then
        ev resize_ok "$1" "$out"
        REQUESTED=$1
        wait_mem 60 $(( BASE_KIB + REQUESTED / 1024 ))
    else
        ev resize_error "$1" "$(echo "$out" | tr '\n' ' ')"
        return 1
    fi
}

# Two vCPUs and a second device (fixed slots): both devices follow their own resizes.
scenario_smp_two_devices() {
    HOTMEM_CPUS=2
    HOTMEM_EXTRA="--mem-device id=mem1,size=32G,requested=0,slots=fixed"
    start_guest || return
    ev resize_request_mem1 "$GiB"
    hotmem-ctl --api-socket "$API" resize mem1 1G > /dev/null 2>&1 || { ev error "resizing mem1 failed"; return; }
    wait_mem 180 $(( BASE_KIB + (REQUESTED + GiB) / 1024 )) || return
    snap both
    hotmem-ctl --api-socket "$API" resize mem1 0 > /dev/null 2>&1 || { ev error "resizing mem1 failed"; return; }
    wait_mem 180 $(( BASE_KIB + REQUESTED / 1024 )) || return
    resize_to $((4 * GiB)) || return
    snap grown
    resize_to $GiB || return
    sleep 2
    snap shrunk
}

# Resize storm: 200 random resizes (1–4 GiB) with no waiting while the guest keeps 512 MiB of
# checksummed files, verified every 50 resizes and at the end. Afterwards the guest must settle
# at the final size with its data intact, and the VMM's memory must come back down.
scenario_storm() {
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 512
    wait_ev 600 1 filled || return
    snap storm-start
    n=0
    while [ $n -lt 200 ]; do
        size=$(( GiB + (RANDOM % 25) * 128 * MiB ))
        hotmem-ctl --api-socket "$API" resize mem0 "$(size_arg "$size")" > /dev/null 2>&1 ||
            { ev error "storm resize $n to $size refused"; return; }
        if [ $((n % 50)) -eq 49 ]; then gcmd verify; fi
        sleep "0.$((RANDOM % 4))"
        n=$((n + 1))
    done
    ev storm_done "$n"
    resize_to $((2 * GiB)) || return
    gcmd verify
    wait_ev 300 5 verify || return
    sleep 2
    snap storm-end
}

# vhost-user: an ext2 disk image in L1's tmpfs behind qemu-storage-daemon (vhost-user-blk) and
# a folder behind virtiofsd (virtio-fs), both backends in L1; guest memory becomes shared memfd.
# The guest mounts both, grows to 4 GiB, writes VHOST_MIB MiB of checksummed files through both
# at once (its page cache sits in hot-plugged memory the backends must have mapped), verifies,
# shrinks to 1 GiB, verifies, unmounts and powers off; then L1 checks the files itself.
# hm.full=1 (e2e --full) writes 1.5 GiB and shrinks with the page cache in place; CI writes
# 256 MiB and drops the page cache before the shrink.
VHOST_MIB=256
[ -n "$FULL" ] && VHOST_MIB=1536

scenario_vhost_user() {
    vhost_backends || return
    HOTMEM_EXTRA="--disk socket=/run/disk.sock,id=disk0 --fs tag=share,socket=/run/fs.sock,id=fs0"
    # QEMU: boot RAM and mem0 in shared memfds, the same two backends.
    QEMU_VMEM_OBJECT=memory-backend-memfd,id=vmem0,size=64G,reserve=off,share=on
    QEMU_EXTRA="-object memory-backend-memfd,id=ram0,size=512M,share=on -machine memory-backend=ram0
        -chardev socket,id=chr-disk,path=/run/disk.sock -device vhost-user-blk-pci,chardev=chr-disk
        -chardev socket,id=chr-fs,path=/run/fs.sock -device vhost-user-fs-pci,chardev=chr-fs,tag=share"
    start_guest || return
    vhost_vm boot1
    gcmd vmount
    wait_ev 60 1 vmounted || return
    resize_to $((4 * GiB)) || return
    snap grown
    vhost_vm grown
    gcmd vfill "$VHOST_MIB"
    wait_ev 600 1 vfilled || { vhost_backend_logs; return; }
    gcmd vverify grown
    wait_ev 600 2 vverify || return
    snap filled
    vhost_vm filled
    # Unplugging memory the guest used (page cache) migrates it block by block: under nested
    # TCG that takes several seconds per 128 MiB, longer than resize_to waits. CI drops the
    # (clean, verified) page cache first to stay short; --full shrinks with it in place.
    if [ -z "$FULL" ]; then
        gcmd dropcache
        wait_ev 60 1 cache_dropped || return
    fi
    shrink_slowly $GiB || return
    gcmd vverify shrunk
    wait_ev 600 4 vverify || return
    sleep 2
    snap shrunk
    vhost_vm shrunk
    gcmd vumount
    wait_ev 60 1 vumounted || return
    # finish() reports hotmem's seccomp state only while it runs: report it before power-off.
    if [ "$VMM" = hotmem ]; then vmm_seccomp; fi
    vhost_poweroff || return
    vhost_host_verify
}

# hotmem only: the same with bookworm's qemu-storage-daemon 7.2 (libvhost-user: 32 memory
# slots) and a 1020 GiB device (L1's KVM takes no slot above 1 TiB: L0's CPU has 40 physical
# address bits): the slot budget shrinks to what that backend takes, resizes still work.
scenario_vhost_user_small_budget() {
    VHOST_QSD=qemu-storage-daemon-7.2
    HOTMEM_MEM_SIZE=1020G
    scenario_vhost_user
}

# vhost_backends: the disk image (ext2, 2 GiB sparse) and shared folder, and their backends.
vhost_backends() {
    mkdir -p /tmp/share
    dd if=/dev/zero of=/tmp/disk.raw bs=1M count=0 seek=2048 2>/dev/null
    mke2fs -F /tmp/disk.raw > /tmp/mke2fs.log 2>&1 || { ev error "mke2fs: $(cat /tmp/mke2fs.log)"; return 1; }
    "${VHOST_QSD:-qemu-storage-daemon}" --blockdev driver=file,node-name=f,filename=/tmp/disk.raw \
        --export type=vhost-user-blk,id=e0,node-name=f,addr.type=unix,addr.path=/run/disk.sock,writable=on \
        > /tmp/qsd.log 2>&1 &
    virtiofsd --socket-path /run/fs.sock --shared-dir /tmp/share --sandbox none > /tmp/vfsd.log 2>&1 &
    i=0
    while { [ ! -S /run/disk.sock ] || [ ! -S /run/fs.sock ]; } && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    [ -S /run/disk.sock ] || { ev error "qemu-storage-daemon did not start: $(cat /tmp/qsd.log)"; return 1; }
    [ -S /run/fs.sock ] || { ev error "virtiofsd did not start: $(cat /tmp/vfsd.log)"; return 1; }
    ev vhost_backends_ready "${VHOST_QSD:-qemu-storage-daemon}" "$("${VHOST_QSD:-qemu-storage-daemon}" --version | head -n 1)"
}

# vhost_backend_logs: the backends' own logs, as events (when something went wrong).
vhost_backend_logs() {
    vhost_vm failure
    ev backends_alive "qsd=$(pidof "${VHOST_QSD:-qemu-storage-daemon}")" "virtiofsd=$(pidof virtiofsd)"
    for t in /proc/$(vmm_pid)/task/*; do
        ev vmm_thread "$(cut -d' ' -f2,3 "$t/stat")" "$(cat "$t/wchan")"
    done
    for f in /tmp/qsd.log /tmp/vfsd.log; do
        tail -n 20 "$f" | while IFS= read -r l; do ev backend_log "${f#/tmp/}" "$l"; done
    done
}

# vhost_poweroff: the guest powers off; waits for the VMM to exit (the backends' files are
# complete only then).
vhost_poweroff() {
    gcmd poweroff
    i=0
    while [ -n "$(vmm_pid)" ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
    [ -z "$(vmm_pid)" ] || { ev error "the VMM did not exit after the guest powered off"; return 1; }
    # finish() writes to the guest's console: the reader is gone, so close it (no SIGPIPE).
    exec 3>&-
    ev vmm_exited
}

# vhost_host_verify: L1 checks the files the guest wrote in the shared folder and, through a
# read-only loop mount, in the disk image, against the sums the guest wrote next to them.
vhost_host_verify() {
    vhost_verify_dir fs /tmp/share
    mkdir -p /mnt/hostdisk
    if mount -t ext2 -o loop,ro /tmp/disk.raw /mnt/hostdisk 2> /tmp/mount.err; then
        vhost_verify_dir disk /mnt/hostdisk
        umount /mnt/hostdisk
    else
        ev error "mounting the disk image in L1 failed: $(cat /tmp/mount.err)"
    fi
}

vhost_verify_dir() {
    if [ ! -s "$2/sums" ]; then ev host_verify "$1" missing 0
    elif (cd "$2" && md5sum -c -s sums); then ev host_verify "$1" ok "$(grep -c . "$2/sums")"
    else ev host_verify "$1" bad "$(cd "$2" && md5sum -c sums 2>&1 | grep -c FAILED)"; fi
}

# virtiofs-root: the guest's root file system is a folder in L1 served by virtiofsd (its
# initramfs only loads virtiofs and switches to it); it boots to the agent and resizes 1 -> 4 -> 1.
scenario_virtiofs_root() {
    mkdir -p /tmp/vroot
    (cd /tmp/vroot && cpio -id < /l2/initramfs.cpio) 2> /tmp/cpio.err ||
        { ev error "unpacking the guest's root failed: $(cat /tmp/cpio.err)"; return; }
    virtiofsd --socket-path /run/root.sock --shared-dir /tmp/vroot --sandbox none > /tmp/vfsd.log 2>&1 &
    i=0
    while [ ! -S /run/root.sock ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    [ -S /run/root.sock ] || { ev error "virtiofsd did not start: $(cat /tmp/vfsd.log)"; return; }
    L2_CMDLINE="$L2_CMDLINE root=vroot rootfstype=virtiofs"
    # Every program the guest starts is read through virtiofs: on busy cores its boot has
    # taken over 3 minutes.
    BOOT_WAIT_S=360
    HOTMEM_EXTRA="--fs tag=vroot,socket=/run/root.sock,id=root0"
    QEMU_VMEM_OBJECT=memory-backend-memfd,id=vmem0,size=64G,reserve=off,share=on
    QEMU_EXTRA="-object memory-backend-memfd,id=ram0,size=512M,share=on -machine memory-backend=ram0
        -chardev socket,id=chr-root,path=/run/root.sock -device vhost-user-fs-pci,chardev=chr-root,tag=vroot"
    start_guest || return
    gcmd rootfs
    wait_ev 30 1 rootfs || return
    resize_to $((4 * GiB)) || return
    snap grown
    vhost_vm grown
    shrink_slowly $GiB || return
    sleep 2
    snap shrunk
    vhost_vm shrunk
}

# shrink_slowly BYTES: resize_to with a longer wait: under nested TCG on busy cores a shrink by
# 3 GiB has taken 3-8 minutes (Linux migrates what the guest used, block by block).
shrink_slowly() {
    ev resize_request "$1"
    vmm_resize "$1" || { ev resize_failed "$1"; return 1; }
    REQUESTED=$1
    wait_mem 600 $(( BASE_KIB + REQUESTED / 1024 ))
}

# vhost_vm LABEL: the VMM's view of its vhost-user backends (regions held vs slots mapped).
vhost_vm() {
    [ "$VMM" = hotmem ] || return 0
    ev hotmem_vm "$1" "$(hotmem-ctl --api-socket "$API" vm 2>&1 | tr '\n' ' ')"
}

# hotmem only: hotmem-jail runs hotmem as uid 1000 in an empty root and new namespaces; the API
# is used from outside the jail through the bound socket folder.
scenario_jailed() {
    API=/run/hm/hotmem.sock
    mkdir -p /run/hm
    HOTMEM_JAIL=/jail
    start_guest || return
    jail_facts
    resize_to $((4 * GiB)) || return
    snap grown
    resize_to $GiB || return
    sleep 2
    snap shrunk
    ev jail_events "$(hotmem-ctl --api-socket "$API" events 2>&1 | grep -c '"event"')"
}

# What L1 sees of the jailed VMM: ids, capabilities, no_new_privs, shared namespaces, root.
jail_facts() {
    pid=$(vmm_pid)
    field() { grep "^$1:" "/proc/$pid/status" | tr -s ' \t' ' ' | cut -d' ' -f"$2"; }
    shared=
    for ns in mnt pid net ipc uts; do
        [ "$(readlink "/proc/$pid/ns/$ns")" = "$(readlink "/proc/self/ns/$ns")" ] && shared="$shared$ns,"
    done
    ev jail "uid=$(field Uid 3)" "gid=$(field Gid 3)" "capeff=$(field CapEff 2)" \
        "capprm=$(field CapPrm 2)" "capbnd=$(field CapBnd 2)" "nnp=$(field NoNewPrivs 2)" \
        "shared_ns=${shared:-none}" "root=$(ls "/proc/$pid/root" | tr '\n' ',')"
}

# Not a scenario: runs `xtask bench $BENCH_ARGS --json` on L1's KVM (TDP MMU), one event per row.
scenario_bench() {
    # word-split on purpose: BENCH_ARGS holds the benchmark and its options
    if /usr/bin/xtask bench $BENCH_ARGS --json > /tmp/bench.out 2> /tmp/bench.err; then
        while IFS= read -r l; do ev bench_row "$l"; done < /tmp/bench.out
    else
        ev bench_error "$(tail -n 5 /tmp/bench.err | tr '\n' ' ')"
    fi
}

# resize_dev ID BYTES TOTAL: resizes device ID to BYTES; waits until the guest has TOTAL bytes
# plugged over all devices.
resize_dev() {
    ev resize_request_dev "$1" "$2"
    vmm_resize_dev "$1" "$2" || return 1
    wait_mem 180 $(( BASE_KIB + $3 / 1024 ))
}

# numa_report LABEL: the guest's per-node memory and the node links of the devices' blocks.
numa_report() {
    gcmd numa "$1"
    wait_ev 60 1 numa_done "$1" || return 1
    snap "$1"
}

NUMA_TWO_NODES_HOTMEM="--numa node=0,cpus=0,memory=512M --numa node=1,cpus=1,memory=512M,distances=0:21"

# Two nodes (a vCPU and 512 MiB each, distance 21), mem0 (1 GiB) on node 0 and mem1 on node 1:
# mem1 +2 GiB, then mem0 +2 GiB, each landing on its own node only; then both shrink back.
scenario_numa() {
    HOTMEM_CPUS=2
    HOTMEM_MEMORY=1G
    HOTMEM_MEM_OPTS=,node=0
    HOTMEM_EXTRA="$NUMA_TWO_NODES_HOTMEM --mem-device id=mem1,size=64G,requested=0,node=1"
    QEMU_SMP=2,sockets=2
    QEMU_MEMORY=1G,maxmem=140G
    QEMU_MEM_OPTS=dynamic-memslots=on,node=0
    QEMU_EXTRA="-object memory-backend-ram,id=ram0,size=512M -object memory-backend-ram,id=ram1,size=512M
        -numa node,nodeid=0,cpus=0,memdev=ram0 -numa node,nodeid=1,cpus=1,memdev=ram1
        -numa dist,src=0,dst=1,val=21
        -object memory-backend-ram,id=vmem1,size=64G,reserve=off
        -device virtio-mem-pci,id=mem1,memdev=vmem1,node=1,requested-size=0,dynamic-memslots=on"
    start_guest || return
    numa_report base || return
    resize_dev mem1 $((2 * GiB)) $((REQUESTED + 2 * GiB)) || return
    numa_report grown1 || return
    resize_dev mem0 $((3 * GiB)) $((3 * GiB + 2 * GiB)) || return
    numa_report grown0 || return
    # Both shrink at once (each takes a while under emulation).
    vmm_resize_dev mem1 0 || return
    resize_dev mem0 "$GiB" "$GiB" || return
    numa_report shrunk || return
    gcmd numafacts
    wait_ev 30 1 numafacts_done || return
}

# hotmem only: a third node with no CPUs and no boot memory, reached only through mem2.
scenario_numa_memory_only_node() {
    HOTMEM_CPUS=2
    HOTMEM_MEMORY=1G
    HOTMEM_MEM_OPTS=,node=0
    HOTMEM_EXTRA="$NUMA_TWO_NODES_HOTMEM --numa node=2,distances=0:31;1:31 --mem-device id=mem2,size=64G,requested=0,node=2"
    start_guest || return
    numa_report base || return
    resize_dev mem2 $((2 * GiB)) $((REQUESTED + 2 * GiB)) || return
    numa_report grown2 || return
    # Node 2 is online now: its distances show (sysfs lists online nodes only).
    gcmd numafacts
    wait_ev 30 1 numafacts_done || return
    resize_dev mem2 0 "$REQUESTED" || return
    numa_report shrunk2 || return
    gcmd numafacts
    wait_ev 30 2 numafacts_done || return
}

# hotmem only: snapshot a running guest (2 GiB plugged, 768 MiB of checksummed files), kill the
# VMM, restore in a new process with fixed slots (the first ran adaptive), check the files,
# resize 2 -> 4 -> 1 GiB; the guest's uptime goes on across the restore.
scenario_snapshot_restore() {
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 768
    wait_ev 600 1 filled || return
    # Snapshot mid-resize: 4 GiB asked for just before, so the guest is still plugging; lazy
    # restore (the default) with another slot policy; the grow must complete after it.
    snapshot_kill_restore "--mem-device id=mem0,slots=fixed" $((4 * GiB)) || return
    gcmd verify
    wait_ev 300 1 verify || return
    wait_mem 180 $(( BASE_KIB + REQUESTED / 1024 )) || return
    snap grown
    resize_to $GiB || return
    gcmd verify
    wait_ev 300 2 verify || return
    sleep 2
    snap shrunk
    # The snapshot's files (in a RAM-backed /tmp) must not grow while the restored VM runs.
    ev snapshot_disk_kib_end "$(du -sk /tmp/snap | cut -f1)"
}

# hotmem only: the 5.10 guest (no UNPLUGGED_INACCESSIBLE: its usable region stays mapped)
# across a snapshot and a lazy restore in a new process, then a shrink.
scenario_snapshot_restore_legacy() {
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 128
    wait_ev 300 1 filled || return
    snapshot_kill_restore "" || return
    gcmd verify
    wait_ev 120 1 verify || return
    resize_to $GiB || return
    sleep 2
    snap shrunk
}

# snapshot_kill_restore OPTS [BYTES]: records the guest's uptime, (asks for BYTES without
# waiting,) snapshots the VM to /tmp/snap, kills the VMM, restores it in a new process with
# hotmem options OPTS, records MemTotal and uptime.
snapshot_kill_restore() {
    gcmd uptime
    wait_ev 30 1 uptime || return
    snap before-snapshot
    if [ -n "$2" ]; then
        ev resize_request "$2"
        vmm_resize "$2" || return
        REQUESTED=$2
    fi
    if out=$(hotmem-ctl --api-socket "$API" snapshot /tmp/snap 2>&1); then
        ev snapshot_ok "$(echo "$out" | tr '\n' ' ')"
    else
        ev error "snapshot failed: $(echo "$out" | tr '\n' ' ')"
        return 1
    fi
    ev snapshot_disk_kib "$(du -sk /tmp/snap | cut -f1)"
    kill -9 "$(vmm_pid)"
    i=0
    while [ -n "$(vmm_pid)" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    exec 3>&-
    rm -f "$API"
    ev vmm_killed
    HOTMEM_RESTORE=/tmp/snap
    HOTMEM_RESTORE_OPTS="$1"
    vmm_start || return
    i=0
    while [ ! -S "$API" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    ev vmm_restored
    # A snapshot needs the guest's MemTotal, and the event file was emptied for the new VMM.
    gcmd memtotal
    wait_ev 60 1 memtotal_kib || return
    snap restored
    gcmd uptime
    wait_ev 60 1 uptime || return
}

# Benchmark (`cargo xtask bench snapshot`, not an e2e scenario): the same VM shape for every
# VMM (512 MiB boot memory, a 64 GiB virtio-mem device with 2 GiB plugged, 256 MiB of files in
# the guest); snapshot it paused to /tmp/snap, kill the VMM, restore into a new one and time
# it until its vCPUs run; the guest's checksums must hold after. One `bench_row` JSON event.
scenario_snapshot_bench() {
    case "$VMM" in
        qemu) VMM_LABEL="qemu-$(qemu-system-x86_64 --version | head -n 1 | sed 's/.*version \([0-9.]*\).*/\1/')" ;;
        *) VMM_LABEL=$VMM ;;
    esac
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 256
    wait_ev 300 1 filled || return
    snap before-snapshot
    vmm_snapshot /tmp/snap || return
    apparent=$(stat -c %s /tmp/snap/* | awk '{s+=$1} END{print s+0}')
    allocated=$(stat -c '%b %B' /tmp/snap/* | awk '{s+=$1*$2} END{print s+0}')
    kill -9 "$(vmm_pid)"
    i=0
    while [ -n "$(vmm_pid)" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    exec 3>&-
    vmm_forget
    ev vmm_killed "memfree_kib=$(meminfo_kib MemFree)" "snapshot_allocated_bytes=$allocated" \
        "snapshot_ms=$SNAPSHOT_MS"
    ms; t0=$MS
    vmm_restore /tmp/snap || return
    ev vmm_restore_started
    i=0
    until vmm_running; do
        i=$((i + 1)); [ $i -gt 1200 ] && { ev error "the restored VM never ran"; return 1; }
        sleep 0.02
    done
    ms; ready=$((MS - t0))
    ev vmm_restored
    gcmd verify
    wait_ev 300 1 verify || return
    case "$(grep ' verify ' "$EVENTS" | tail -n 1)" in
        *" verify ok"*) ;;
        *) ev error "checksums after the restore: $(grep ' verify ' "$EVENTS" | tail -n 1)"; return 1 ;;
    esac
    ev bench_row "{\"vmm\":\"$VMM_LABEL\",\"region_bytes\":$((64 * GiB)),\"plugged_bytes\":$((2 * GiB)),\"file_apparent_bytes\":$apparent,\"file_allocated_bytes\":$allocated,\"snapshot_ms\":$SNAPSHOT_MS,\"restore_ready_ms\":$ready}"
}
