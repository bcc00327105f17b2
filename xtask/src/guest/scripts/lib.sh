# Shared L1 helpers: start the VMM, relay its console, send guest commands, wait, snapshot.
# A VMM driver (vmm-NAME.sh) defines vmm_launch, vmm_resize BYTES, vmm_status LABEL, vmm_pid.
CR=$(printf '\r')
EVENTS=/tmp/l2.ev
GiB=1073741824
MiB=1048576

meminfo_kib() { grep "^$1:" /proc/meminfo | tr -s ' ' | cut -d' ' -f2; }

relay_l2() {
    while IFS= read -r l; do
        l=${l%"$CR"}
        ms
        echo "@@L2 $MS $l"
        case "$l" in *"@@HM "*) echo "$MS ${l#*@@HM }" >> "$EVENTS" ;; esac
    done
    ev l2_console_closed
}

relay_vmm_err() {
    while IFS= read -r l; do ms; echo "@@VM $MS $l"; done
}

# Starts the VMM with the L2 guest; its console comes back through relay_l2.
vmm_start() {
    : > "$EVENTS"
    rm -f /tmp/l2in /tmp/vmmerr
    mkfifo /tmp/l2in /tmp/vmmerr
    relay_vmm_err < /tmp/vmmerr &
    ev l1_idle "memfree_kib=$(meminfo_kib MemFree)" "vmalloc_kib=$(meminfo_kib VmallocUsed)"
    ev vmm_start "$VMM"
    vmm_launch < /tmp/l2in 2> /tmp/vmmerr | relay_l2 &
    exec 3> /tmp/l2in
    i=0
    while [ -z "$(vmm_pid)" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
    vmm_alive
}

# vmm_alive: whether the VMM still runs (reports its death once).
vmm_alive() {
    [ -n "$(vmm_pid)" ] && return 0
    [ -n "$VMM_DEAD" ] || { VMM_DEAD=1; ev error "the VMM exited"; }
    return 1
}

# gcmd WORDS: sends one command line to the L2 init.
gcmd() { ev gcmd "$*"; echo "$*" >&3; }

# count_ev KEY [VALUE]: how many L2 events KEY (with first value VALUE) arrived.
count_ev() {
    if [ -n "$2" ]; then grep -c "^[0-9]* [0-9]* $1 $2\( \|\$\)" "$EVENTS"; else
        grep -c "^[0-9]* [0-9]* $1\( \|\$\)" "$EVENTS"; fi
}

# wait_ev SECONDS N KEY [VALUE]: waits until at least N such L2 events arrived.
wait_ev() {
    t=$1; n=$2; shift 2
    end=$(( $(date +%s) + t ))
    while [ "$(count_ev "$@")" -lt "$n" ]; do
        if [ "$(date +%s)" -ge "$end" ]; then ev timeout "waiting for $n x $*"; return 1; fi
        vmm_alive || return 1
        sleep 0.2
    done
}

last_memtotal() { grep " memtotal_kib " "$EVENTS" | tail -n 1 | cut -d' ' -f4; }

# wait_mem SECONDS KIB: waits until the guest reports MemTotal == KIB.
wait_mem() {
    end=$(( $(date +%s) + $1 ))
    while [ "$(last_memtotal)" != "$2" ]; do
        if [ "$(date +%s)" -ge "$end" ]; then
            ev timeout "guest MemTotal $(last_memtotal) KiB, wanted $2 KiB"; return 1
        fi
        vmm_alive || return 1
        sleep 0.2
    done
    ev settled "$2"
}

# boot_guest N: waits for the Nth L2 boot to reach init, records the pre-driver state, loads
# the virtio-mem driver and waits for the requested memory to appear.
boot_guest() {
    wait_ev "${BOOT_WAIT_S:-180}" "$1" ready || return 1
    BASE_KIB=$(last_memtotal)
    ev guest_base_kib "$BASE_KIB"
    snap "boot$1-pre-driver"
    gcmd go
    wait_ev 60 "$1" modules_loaded || return 1
    wait_mem 120 $(( BASE_KIB + REQUESTED / 1024 )) || return 1
    snap "boot$1-plugged"
}

# resize_to BYTES: asks the VMM for BYTES; waits for the guest to follow.
resize_to() {
    ev resize_request "$1"
    if vmm_resize "$1"; then
        REQUESTED=$1
        wait_mem 180 $(( BASE_KIB + REQUESTED / 1024 ))
    else
        ev resize_failed "$1"
        return 1
    fi
}

# snap LABEL: L1 memory, VMM RSS and the VMM's own report.
snap() {
    mf=$(meminfo_kib MemFree)
    vm=$(meminfo_kib VmallocUsed)
    rss=$(grep '^VmRSS:' "/proc/$(vmm_pid)/status" 2>/dev/null | tr -s ' \t' ' ' | cut -d' ' -f2)
    # The VMM's own memory: resident pages outside mappings of 256 MiB or more (guest RAM, the
    # same rule for every VMM).
    own=$(awk '/^[0-9a-f]+-[0-9a-f]+ /{big=0} /^Size:/{big=($2>=262144)} /^Rss:/{if(!big)s+=$2}
        END{print s+0}' "/proc/$(vmm_pid)/smaps" 2>/dev/null)
    ev snap "$1" "memfree_kib=$mf" "vmalloc_kib=$vm" "rss_kib=${rss:-missing}" \
        "guest_memtotal_kib=$(last_memtotal)" "own_kib=${own:-missing}"
    vmm_status "$1"
}

# vmm_seccomp: hotmem's --seccomp mode, its Seccomp mode (2: filters) and every thread's
# name:number of stacked filters.
vmm_seccomp() {
    p=$(vmm_pid)
    [ -n "$p" ] || return 0
    threads=""
    for t in /proc/"$p"/task/*; do
        # A thread that ends between the listing and the reads (an API connection's) is skipped.
        name=$(cat "$t/comm" 2>/dev/null) || continue
        filters=$(awk '/^Seccomp_filters:/{print $2}' "$t/status" 2>/dev/null) || continue
        [ -d "$t" ] || continue
        threads="$threads $name:$filters"
    done
    ev vmm_seccomp "$HOTMEM_SECCOMP" "$(awk '/^Seccomp:/{print $2}' /proc/"$p"/status)" $threads
}

finish() {
    if [ "$VMM" = hotmem ]; then vmm_seccomp; fi
    gcmd poweroff
    i=0
    while [ -n "$(vmm_pid)" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    if [ -n "$(vmm_pid)" ]; then ev vmm_still_running; kill "$(vmm_pid)"; sleep 1; fi
    # Calls outside a seccomp allow list (killed or logged): the kernel's audit lines.
    dmesg | grep 'type=1326' | while read -r line; do ev seccomp "$line"; done
    ev done
    sync
    poweroff -f
}

# size_arg BYTES: BYTES as NG / NM when exact, else plain bytes.
size_arg() {
    if [ $(( $1 % GiB )) -eq 0 ]; then echo "$(( $1 / GiB ))G"
    elif [ $(( $1 % MiB )) -eq 0 ]; then echo "$(( $1 / MiB ))M"
    else echo "$1"; fi
}
