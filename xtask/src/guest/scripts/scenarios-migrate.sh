# Live-migration scenarios and the migration benchmark (sourced after scenarios.sh).

# Live migration: more VMM processes in the same L1 receive the VM over TCP loopback. For
# hotmem, each destination N (4, 5, ...) has its console on fd N (fifo /tmp/l2in-N), its API
# on /run/hotmem-N.sock and its exit status in /tmp/rc-N. QEMU's side (`migrate` and the
# benchmark only) is qemu_dst_start / qemu_migrate_to in vmm-qemu.sh.
MIG_ADDR=tcp:127.0.0.1:4444

# dst_start N [OPTS]: starts `hotmem --incoming` (or QEMU with -incoming) as destination N.
dst_start() {
    if [ "$VMM" = qemu ]; then qemu_dst_start "$1"; return; fi
    n=$1; shift
    rm -f "/tmp/l2in-$n" "/tmp/vmmerr-$n" "/run/hotmem-$n.sock" "/tmp/rc-$n"
    mkfifo "/tmp/l2in-$n" "/tmp/vmmerr-$n"
    relay_vmm_err < "/tmp/vmmerr-$n" &
    { hotmem --incoming "$MIG_ADDR" "$@" --serial stdio --api-socket "/run/hotmem-$n.sock" \
          --seccomp "$HOTMEM_SECCOMP"
      echo "$?" > "/tmp/rc-$n"; } < "/tmp/l2in-$n" 2> "/tmp/vmmerr-$n" | relay_l2 &
    eval "exec $n> /tmp/l2in-$n"
    ev dst_started "$n" "$*"
    sleep 1
}

# dst_pid N: the pid of destination N (its API socket names it).
dst_pid() {
    for p in $(pidof hotmem); do
        tr '\0' ' ' < "/proc/$p/cmdline" | grep -q "hotmem-$1.sock" && echo "$p"
    done
}

# migrate_to N [OPTS]: migrates the current VM to destination N (hotmem-ctl migrate OPTS),
# waits for the source to exit, and switches the console and the API to N (whose exit status
# goes to /tmp/rc-N).
# 300 ms is reachable here under TCG: the measured switchover (pause settle, device state, round
# trip, destination restore) is 60-100 ms, the pauses 140-180 ms; migrate_check.rs fails a pause
# over 1.5 x the max asked for.
migrate_to() {
    if [ "$VMM" = qemu ]; then qemu_migrate_to "$1"; return; fi
    migrate_begin "$@"
    migrate_end "$1"
}

# migrate_begin N [OPTS]: starts the migration to destination N in the background.
migrate_begin() {
    n=$1; shift
    rm -f "/tmp/mig-$n.out" "/tmp/mig-$n.rc"
    { hotmem-ctl --api-socket "$API" migrate "$MIG_ADDR" --max-downtime-ms 300 "$@" \
          > "/tmp/mig-$n.out" 2>&1; echo "$?" > "/tmp/mig-$n.rc"; } &
}

# migrate_end N: waits for the migration to destination N, then switches to N as migrate_to.
migrate_end() {
    n=$1
    while [ ! -f "/tmp/mig-$n.rc" ]; do sleep 0.2; done
    out=$(cat "/tmp/mig-$n.out")
    if [ "$(cat "/tmp/mig-$n.rc")" = 0 ]; then
        ev migrate_ok "$n" "$(echo "$out" | tail -n 1)"
    else
        ev error "migration to $n failed: $(echo "$out" | tr '\n' ' ')"
        return 1
    fi
    i=0
    while [ ! -f "$HOTMEM_RC" ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
    ev source_rc "$(cat "$HOTMEM_RC" 2>/dev/null || echo missing)"
    eval "exec 3>&$n"
    API=/run/hotmem-$n.sock
    HOTMEM_RC=/tmp/rc-$n
    i=0
    while [ ! -S "$API" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    ev vmm_migrated "$n"
}

# Migrate a running guest (2 GiB plugged, 768 MiB of checksummed files, a writer running
# during the migration) to a second VMM of the same kind (QEMU: `-incoming tcp:`, downtime
# limit 300 ms, the source quit afterwards); check the files and the writer's log on the
# destination; resize 2 -> 4 -> 1 GiB there. The guest's uptime goes on.
scenario_migrate() {
    HOTMEM_RC=/tmp/src.rc
    QEMU_RC=/tmp/src.rc
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 768
    wait_ev 600 1 filled || return
    gcmd uptime
    wait_ev 30 1 uptime || return
    snap before-migration
    dst_start 4 || return
    gcmd writer_start
    wait_ev 30 1 writer_started || return
    migrate_to 4 || return
    gcmd uptime
    wait_ev 60 2 uptime || return
    snap migrated
    gcmd writer_stop
    wait_ev 60 1 writer || return
    gcmd verify
    wait_ev 300 1 verify || return
    resize_to $((4 * GiB)) || return
    snap grown
    resize_to $GiB || return
    gcmd verify
    wait_ev 300 2 verify || return
    sleep 2
    snap shrunk
}

# hotmem only: a guest rewriting 16 MiB files without pause is migrated over a link capped at
# 16 MB/s with auto-converge: the source throttles the vCPUs until the dirty pages fit the
# 300 ms pause. The writer's log and the files verify on the destination.
scenario_migrate_converge() {
    HOTMEM_RC=/tmp/src.rc
    start_guest || return
    gcmd fill 128
    wait_ev 600 1 filled || return
    gcmd uptime
    wait_ev 30 1 uptime || return
    snap before-migration
    dst_start 4 || return
    gcmd writer_start
    wait_ev 30 1 writer_started || return
    migrate_to 4 --auto-converge --max-bandwidth 16000000 || return
    gcmd uptime
    wait_ev 60 2 uptime || return
    snap migrated
    gcmd writer_stop
    wait_ev 60 1 writer || return
    gcmd verify
    wait_ev 300 1 verify || return
}

# hotmem only: a VM with a vhost-user-blk disk (qemu-storage-daemon) moves to a hotmem whose
# own qemu-storage-daemon exports the same image (one L1: the host page cache keeps the two
# coherent; image locking off). During the pre-copy rounds the guest reads its files one after
# another with the page cache dropped before each, so the backend keeps writing guest memory
# the source already sent: only its dirty log (VHOST_F_LOG_ALL) gets those pages to the
# destination, where the files must verify from the page cache as it arrived, then from the
# disk; a file is rewritten and verified there.
scenario_migrate_vhost_user() {
    HOTMEM_RC=/tmp/src.rc
    mig_disk_backend "" || return
    mig_disk_backend -4 || return
    HOTMEM_EXTRA="--disk socket=/run/disk.sock,id=disk0"
    # Debian's kernel zeroes every page it allocates (init_on_alloc): KVM's log would then see
    # each page cache page written by the vCPU just before the backend fills it, and cover
    # most of what the backend's own log is there for. Without it, only the backend's log does.
    L2_CMDLINE="$L2_CMDLINE init_on_alloc=0"
    start_guest || return
    gcmd dmount
    wait_ev 60 1 dmounted || return
    gcmd dfill 128
    wait_ev 600 1 dfilled || return
    gcmd uptime
    wait_ev 30 1 uptime || return
    snap before-migration
    dst_start 4 --disk socket=/run/disk-4.sock,id=disk0 || return
    # The reader runs through the first pass and the round after it; the link is capped so
    # that the migration cannot converge meanwhile. The pages the backend rewrites after they
    # were sent reach the destination only through its dirty log. (If the stop came too late
    # for the source, the reader stops by itself after 90 s on the destination.)
    gcmd dreader_start 90
    wait_ev 30 1 dreader_started || return
    migrate_begin 4 --max-bandwidth 20000000
    i=0
    until hotmem-ctl --api-socket "$API" migration 2>/dev/null | grep -Eq '"round":([3-9]|[1-9][0-9])'; do
        [ $i -lt 900 ] || { ev error "the migration never got past its second round"; return 1; }
        sleep 0.2; i=$((i + 1))
    done
    gcmd dreader_stop
    migrate_end 4 || return
    gcmd uptime
    wait_ev 60 2 uptime || return
    snap migrated
    gcmd dreader_wait
    wait_ev 150 1 dreader || return
    gcmd dverify migrated cached
    wait_ev 300 1 dverify || return
    gcmd dverify migrated disk
    wait_ev 300 2 dverify || return
    gcmd dfill 16
    wait_ev 300 2 dfilled || return
    gcmd dverify written disk
    wait_ev 300 3 dverify || return
}

# mig_disk_backend SUFFIX: qemu-storage-daemon exporting /tmp/disk.raw (an ext2 image, made by
# the first call) on /run/diskSUFFIX.sock, with image locking off so that a second daemon (the
# destination's) can open it too.
mig_disk_backend() {
    if [ ! -f /tmp/disk.raw ]; then
        dd if=/dev/zero of=/tmp/disk.raw bs=1M count=0 seek=1024 2>/dev/null
        mke2fs -F /tmp/disk.raw > /tmp/mke2fs.log 2>&1 || { ev error "mke2fs: $(cat /tmp/mke2fs.log)"; return 1; }
    fi
    qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/tmp/disk.raw,locking=off \
        --export type=vhost-user-blk,id=e0,node-name=f,addr.type=unix,addr.path="/run/disk$1.sock",writable=on \
        > "/tmp/qsd$1.log" 2>&1 &
    i=0
    while [ ! -S "/run/disk$1.sock" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    [ -S "/run/disk$1.sock" ] || { ev error "qemu-storage-daemon$1 did not start: $(cat "/tmp/qsd$1.log")"; return 1; }
    ev disk_backend_ready "$1"
}

# hotmem only: a 1 -> 4 GiB grow is requested just before the migration starts, so the guest
# plugs while memory is being sent (hotmem keeps serving PLUG; QEMU would answer BUSY). The
# guest reaches 4 GiB on the destination, its files verify, and it shrinks to 1 GiB there.
scenario_migrate_resizing() {
    HOTMEM_RC=/tmp/src.rc
    start_guest || return
    gcmd fill 256
    wait_ev 600 1 filled || return
    gcmd uptime
    wait_ev 30 1 uptime || return
    snap before-migration
    dst_start 4 || return
    vmm_resize $((4 * GiB)) || return
    REQUESTED=$((4 * GiB))
    migrate_to 4 || return
    wait_mem 300 $(( BASE_KIB + REQUESTED / 1024 )) || return
    gcmd uptime
    wait_ev 60 2 uptime || return
    snap grown
    gcmd verify
    wait_ev 300 1 verify || return
    resize_to $GiB || return
    gcmd verify
    wait_ev 300 2 verify || return
    sleep 2
    snap shrunk
}

# hotmem only: the destination is killed mid-stream (the source keeps running, files intact),
# a retry to a new destination with another slot policy succeeds (adaptive -> fixed), and a
# second hop goes on to a third hotmem (fixed -> adaptive).
scenario_migrate_faults() {
    HOTMEM_RC=/tmp/src.rc
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 512
    wait_ev 600 1 filled || return
    gcmd uptime
    wait_ev 30 1 uptime || return
    dst_start 4 || return
    hotmem-ctl --api-socket "$API" migrate "$MIG_ADDR" > /tmp/mig1.out 2>&1 &
    mig=$!
    # Kill the destination once memory flows (the first pass takes ~20 s here).
    i=0
    while [ $i -lt 100 ]; do
        st=$(hotmem-ctl --api-socket "$API" migration 2>/dev/null)
        # At least 10 MB sent: memory is flowing.
        case "$st" in
            *'"transferred_bytes":'[1-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]*) break ;;
        esac
        sleep 0.2; i=$((i + 1))
    done
    pid=$(dst_pid 4)
    [ -n "$pid" ] || { ev error "destination 4 not found"; return; }
    kill -9 "$pid"
    ev dst_killed "$st"
    if wait "$mig"; then ev error "the migration to a killed destination succeeded"; return; fi
    ev migrate_failed_as_expected "$(tail -n 1 /tmp/mig1.out)"
    vmm_alive || return
    gcmd uptime
    wait_ev 60 2 uptime || return
    snap after-fault
    gcmd verify
    wait_ev 300 1 verify || return
    dst_start 5 --mem-device id=mem0,slots=fixed || return
    migrate_to 5 || return
    snap hop1
    gcmd verify
    wait_ev 300 2 verify || return
    dst_start 6 --mem-device id=mem0,slots=adaptive || return
    migrate_to 6 || return
    gcmd uptime
    wait_ev 60 3 uptime || return
    snap hop2
    gcmd verify
    wait_ev 300 3 verify || return
    resize_to $((3 * GiB)) || return
    snap grown
}

# hotmem only: the source maps its device through one static slot (slots=single, 64 GiB
# mapped), the destination through adaptive slots (only the plugged 2 GiB mapped); the files
# verify there. (adaptive -> fixed -> adaptive is in migrate-faults.)
scenario_migrate_policy_differ() {
    HOTMEM_RC=/tmp/src.rc
    HOTMEM_MEM_OPTS=,slots=single
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 256
    wait_ev 600 1 filled || return
    gcmd uptime
    wait_ev 30 1 uptime || return
    snap before-migration
    dst_start 4 --mem-device id=mem0,slots=adaptive || return
    migrate_to 4 || return
    gcmd uptime
    wait_ev 60 2 uptime || return
    snap migrated
    gcmd verify
    wait_ev 300 1 verify || return
    resize_to $((3 * GiB)) || return
    snap grown
    gcmd verify
    wait_ev 300 2 verify || return
}

# boot_ram_touched_bytes: the resident size (Rss) of the VMM's 512 MiB boot-RAM mapping, the
# one mapping in /proc/PID/smaps whose Size is 512 MiB (up to 4 MiB more for alignment).
boot_ram_touched_bytes() {
    awk '/^[0-9a-f]+-[0-9a-f]+ /{size=0} /^Size:/{size=$2}
        /^Rss:/{if (size >= 524288 && size <= 528384) {n++; rss=$2}}
        END{if (n == 1) print rss * 1024; else print "none"}' "/proc/$(vmm_pid)/smaps"
}

# Benchmark (`cargo xtask bench migrate`, not an e2e scenario): the same VM shape for every
# VMM (512 MiB boot memory, a 64 GiB device with 2 GiB plugged, 256 MiB of checksummed files,
# no writer), migrated over TCP loopback to a second VMM of the same kind in this L1 with a
# 300 ms downtime limit; the files must verify on the destination. One `bench_row` event with
# the VMM's own migration report (hotmem: its migration-completed event; QEMU: query-migrate).
scenario_migrate_bench() {
    case "$VMM" in
        qemu) VMM_LABEL="qemu-$(qemu-system-x86_64 --version | head -n 1 | sed 's/.*version \([0-9.]*\).*/\1/')" ;;
        *) VMM_LABEL=$VMM ;;
    esac
    HOTMEM_RC=/tmp/src.rc
    QEMU_RC=/tmp/src.rc
    start_guest || return
    resize_to $((2 * GiB)) || return
    gcmd fill 256
    wait_ev 300 1 filled || return
    snap before-migration
    touched=$(boot_ram_touched_bytes)
    case "$touched" in
        '' | *[!0-9]*) ev error "no single 512 MiB boot-RAM mapping in the VMM's smaps"; return 1 ;;
    esac
    dst_start 4 || return
    if [ "$VMM" = hotmem ]; then
        hotmem-ctl --api-socket "$API" events --follow > /tmp/mig-events.ndjson 2>&1 &
        sleep 1
    fi
    migrate_to 4 || return
    if [ "$VMM" = hotmem ]; then
        report=$(grep '"event":"migration-completed"' /tmp/mig-events.ndjson | tail -n 1)
    else
        report=$QEMU_MIGRATION
    fi
    [ -n "$report" ] || { ev error "no migration report"; return 1; }
    snap migrated
    gcmd verify
    wait_ev 300 1 verify || return
    verdict=$(grep ' verify ' "$EVENTS" | tail -n 1 | cut -d' ' -f4-)
    case "$verdict" in
        ok*) ;;
        *) ev error "checksums on the destination: $verdict"; return 1 ;;
    esac
    ev bench_row "{\"vmm\":\"$VMM_LABEL\",\"region_bytes\":$((64 * GiB)),\"plugged_bytes\":$((2 * GiB)),\"boot_ram_touched_bytes\":$touched,\"verify\":\"$verdict\",\"report\":$report}"
}
