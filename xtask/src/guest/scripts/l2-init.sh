#!/bin/busybox sh
# L2 guest init: reports memory state and obeys commands read from the serial console.
# Output lines for the harness: "@@HM <uptime_ms> <key> <value...>".
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null

# load_modules [SKIP]: loads /etc/modules.order in order, except SKIP and what is loaded.
load_modules() {
    for m in $(cat /etc/modules.order); do
        [ "$m" = "$1" ] || [ -d "/sys/module/$m" ] && continue
        insmod "/lib/modules/$m.ko" || echo "@@HM 0 insmod_failed $m"
    done
}

# A virtio-fs root (root=TAG rootfstype=virtiofs): from the initramfs, load the virtio and
# virtiofs modules (virtio_mem waits for "go"), mount the shared folder and switch to it; the
# same init then runs from there.
root_tag=
root_type=
for word in $(cat /proc/cmdline); do
    case "$word" in
        root=*) root_tag=${word#root=} ;;
        rootfstype=*) root_type=${word#rootfstype=} ;;
    esac
done
if [ "$root_type" = virtiofs ] && ! grep -q '^[^ ]* / virtiofs ' /proc/mounts; then
    load_modules virtio_mem
    mkdir -p /newroot
    if mount -t virtiofs "$root_tag" /newroot; then
        umount /proc /sys /dev 2>/dev/null
        exec switch_root /newroot /init
    fi
    echo "@@HM 0 error mounting the virtiofs root $root_tag failed"
fi
mkdir -p /data
# tmpfs defaults to half of the boot memory: allow it to use plugged memory too.
mount -t tmpfs -o size=64g tmpfs /data
stty -echo -icrnl 2>/dev/null

ms() { read -r up _ < /proc/uptime; MS=${up%.*}${up#*.}0; }
ev() { ms; echo "@@HM $MS $*"; }

memtotal_kib() {
    while read -r k v _; do
        if [ "$k" = MemTotal: ]; then echo "$v"; return; fi
    done < /proc/meminfo
}

monitor() {
    last=
    while :; do
        t=$(memtotal_kib)
        if [ "$t" != "$last" ]; then ev memtotal_kib "$t"; last=$t; fi
        sleep 0.2
    done
}

# fill MIB: writes MIB MiB of patterned files into tmpfs and reports their checksums.
fill() {
    dd if=/dev/urandom of=/tmp/seed bs=64k count=1 2>/dev/null
    i=0
    while [ $((i * 16)) -lt "$1" ]; do
        { echo "file $i"; cat /tmp/seed /tmp/seed /tmp/seed /tmp/seed; } > /tmp/chunk
        cat /tmp/chunk /tmp/chunk /tmp/chunk /tmp/chunk > /tmp/chunk4
        : > "/data/f$i"
        j=0
        while [ $j -lt 16 ]; do
            cat /tmp/chunk4 >> "/data/f$i" || { ev error "writing /data/f$i failed"; return 1; }
            j=$((j + 1))
        done
        i=$((i + 1))
    done
    rm -f /tmp/chunk /tmp/chunk4
    (cd /data && md5sum f* > /sums)
    ev filled "$i" "$(du -sk /data | cut -f1)" "$(md5sum < /sums | cut -d' ' -f1)"
}

# writer_start: keeps writing while a migration runs: a numbered log (one line a step) and a
# copy of one of the fill files, over and over. writer_stop checks the log has no gaps.
writer_start() {
    rm -f /tmp/stopw /data/w.log
    ( i=0; while [ ! -f /tmp/stopw ]; do
          echo "$i" >> /data/w.log
          cp "/data/f$((i % 8))" /data/hot 2>/dev/null
          i=$((i + 1))
      done; touch /tmp/writer_done ) &
    ev writer_started
}

writer_stop() {
    touch /tmp/stopw
    while [ ! -f /tmp/writer_done ]; do sleep 0.1; done
    ev writer "$(awk 'NR - 1 != $1 { bad = 1 } END { print (bad ? "bad" : "ok"), NR }' /data/w.log)"
}

verify() {
    if (cd /data && md5sum -c -s /sums); then ev verify ok "$(ls /data | wc -l)"; else
        ev verify bad "$(cd /data && md5sum -c /sums 2>&1 | grep -c FAILED)"
    fi
}

# blkfill MIB: writes MIB MiB of random data to the virtio-blk disk, reports its checksum.
blkfill() {
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    [ -b /dev/vda ] || { ev error "no /dev/vda"; return 1; }
    dd if=/dev/urandom of=/tmp/blk bs=1M count="$1" 2>/dev/null
    md5sum < /tmp/blk | cut -d' ' -f1 > /tmp/blk.sum
    dd if=/tmp/blk of=/dev/vda bs=1M conv=fsync 2>/dev/null || { ev error "writing /dev/vda failed"; return 1; }
    rm -f /tmp/blk
    ev blkfilled "$1" "$(cat /tmp/blk.sum)"
}

# blkverify: reads the data back from the disk itself (page cache dropped) and compares.
blkverify() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
    got=$(dd if=/dev/vda bs=1M count="$BLK_MIB" 2>/dev/null | md5sum | cut -d' ' -f1)
    if [ "$got" = "$(cat /tmp/blk.sum)" ]; then ev blkverify ok "$BLK_MIB"; else ev blkverify bad "$got"; fi
}

# vmount: mounts the shared folder (virtio-fs tag "share") and the vhost-user disk (ext2).
vmount() {
    mkdir -p /mnt/fs /mnt/disk
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    mount -t virtiofs share /mnt/fs || { ev error "mounting the shared folder failed"; return 1; }
    mount -t ext2 /dev/vda /mnt/disk || { ev error "mounting /dev/vda failed"; return 1; }
    ev vmounted
}

# vfill_dir DIR MIB: MIB MiB of 16 MiB files (each with its own first line) and their sums.
vfill_dir() {
    i=0
    c=/tmp/vchunk-${1##*/}
    while [ $((i * 16)) -lt "$2" ]; do
        { echo "$1 file $i"; cat /tmp/vseed /tmp/vseed /tmp/vseed /tmp/vseed; } > "$c"
        cat "$c" "$c" "$c" "$c" > "$c.4"
        : > "$1/f$i"
        j=0
        while [ $j -lt 16 ]; do
            cat "$c.4" >> "$1/f$i" || { ev error "writing $1/f$i failed"; return 1; }
            j=$((j + 1))
        done
        i=$((i + 1))
        ev vprogress "$1" "$i"
    done
    rm -f "$c" "$c.4"
    (cd "$1" && md5sum f* > sums) || ev error "checksumming $1 failed"
    ev vprogress "$1" summed
}

# vfill MIB: writes MIB MiB of checksummed files, half to each mount, both at once.
vfill() {
    dd if=/dev/urandom of=/tmp/vseed bs=64k count=1 2>/dev/null
    vfill_dir /mnt/fs $(($1 / 2)) &
    fs_writer=$!
    vfill_dir /mnt/disk $(($1 / 2))
    # Only the writer: a bare `wait` would wait for the MemTotal monitor too.
    wait "$fs_writer"
    ev vprogress syncing
    sync
    ev vfilled "$1" "$(ls /mnt/fs | grep -c '^f')" "$(ls /mnt/disk | grep -c '^f')"
}

# vverify LABEL: drops the page cache, then checks both mounts' files against their sums.
vverify() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
    for d in fs disk; do
        if (cd "/mnt/$d" && md5sum -c -s sums); then
            ev vverify "$1" "$d" ok "$(grep -c . "/mnt/$d/sums")"
        else
            ev vverify "$1" "$d" bad "$(cd "/mnt/$d" && md5sum -c sums 2>&1 | grep -c FAILED)"
        fi
    done
}

# dmount: mounts the vhost-user disk alone (no shared folder).
dmount() {
    mkdir -p /mnt/disk
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    mount -t ext2 /dev/vda /mnt/disk || { ev error "mounting /dev/vda failed"; return 1; }
    ev dmounted
}

# dfill MIB: MIB MiB of checksummed files on the disk.
dfill() {
    dd if=/dev/urandom of=/tmp/vseed bs=64k count=1 2>/dev/null
    vfill_dir /mnt/disk "$1" || return
    sync
    ev dfilled "$1" "$(ls /mnt/disk | grep -c '^f')"
}

# dreader_start SECONDS: until dreader_stop (at most SECONDS), reads one of the disk's files
# after another (f0, f1, ...) with the page cache dropped before each, so the backend keeps
# writing guest memory: the freed pages are reused, each time holding another file's data.
# The last file read stays cached. dreader_wait reports the passes and how many failed.
dreader_start() {
    rm -f /tmp/reader_done /tmp/stopr
    files=$(grep -c . /mnt/disk/sums)
    ( end=$(( $(cut -d. -f1 /proc/uptime) + $1 )); n=0; bad=0
      while [ ! -f /tmp/stopr ] && [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
          echo 3 > /proc/sys/vm/drop_caches
          (cd /mnt/disk && grep " f$((n % files))\$" sums | md5sum -c -s) || bad=$((bad + 1))
          n=$((n + 1))
      done
      echo "$n $bad" > /tmp/reader_done ) &
    ev dreader_started "$1"
}

dreader_wait() {
    while [ ! -f /tmp/reader_done ]; do sleep 0.2; done
    ev dreader "$(cat /tmp/reader_done)"
}

# dverify LABEL cached|disk: checks the disk's files as the page cache holds them, or after
# dropping it (read from the backend again).
dverify() {
    if [ "$2" = disk ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
    if (cd /mnt/disk && md5sum -c -s sums); then
        ev dverify "$1" "$2" ok "$(grep -c . /mnt/disk/sums)"
    else
        ev dverify "$1" "$2" bad "$(cd /mnt/disk && md5sum -c sums 2>&1 | grep -c FAILED)"
    fi
}

vumount() {
    sync
    umount /mnt/fs && umount /mnt/disk && ev vumounted
}

# numa LABEL: each online node's MemTotal, then for each virtio-mem device (found in the
# kernel log) its online blocks, how many link to the device's node only, how many are Movable.
numa() {
    for d in /sys/devices/system/node/node[0-9]*; do
        [ -e "$d/meminfo" ] || continue
        while read -r _ _ k v _; do
            [ "$k" = MemTotal: ] && ev node_mem "$1" "${d##*node}" "$v"
        done < "$d/meminfo"
    done
    bs=$((0x$(cat /sys/devices/system/memory/block_size_bytes)))
    log=$(dmesg)
    for dev in $(echo "$log" | sed -n 's/.*virtio_mem \(virtio[0-9]*\): start address:.*/\1/p' | sort -u); do
        start=$(echo "$log" | sed -n "s/.*virtio_mem $dev: start address: \(0x[0-9a-f]*\).*/\1/p" | tail -n 1)
        size=$(echo "$log" | sed -n "s/.*virtio_mem $dev: region size: \(0x[0-9a-f]*\).*/\1/p" | tail -n 1)
        nid=$(echo "$log" | sed -n "s/.*virtio_mem $dev: nid: \([0-9]*\).*/\1/p" | tail -n 1)
        first=$((start / bs)); end=$(( (start + size) / bs ))
        online=0; on_nid=0; movable=0
        for b in /sys/devices/system/memory/memory[0-9]*; do
            i=${b##*memory}
            [ "$i" -ge "$first" ] && [ "$i" -lt "$end" ] || continue
            read -r on < "$b/online"
            [ "$on" = 1 ] || continue
            online=$((online + 1))
            set -- "$b"/node*
            [ $# -eq 1 ] && [ "$1" = "$b/node$nid" ] && on_nid=$((on_nid + 1))
            read -r zone < "$b/valid_zones"
            [ "$zone" = Movable ] && movable=$((movable + 1))
        done
        ev vmem_blocks "$LABEL" "start=$((start))" "nid=${nid:-none}" "online=$online" "on_nid=$on_nid" "movable=$movable"
    done
    ev numa_done "$LABEL"
}

# numafacts: nodes, their CPUs and distances, and the kernel log's NUMA lines and warnings.
numafacts() {
    n=/sys/devices/system/node
    ev numa_nodes "possible=$(cat $n/possible)" "online=$(cat $n/online)"
    for d in $n/node[0-9]*; do
        ev numa_node "${d##*node}" "cpus=$(cat "$d/cpulist")" "distance=$(tr ' ' , < "$d/distance")"
    done
    # A kernel WARN prints "WARNING: CPU: n PID: ..." under a "cut here" line.
    bad='WARNING: CPU\|cut here\|not on the same node\|SRAT not used\|nodes only cover\|node_possible_map\|SLIT table looks invalid\|NUMA turned off\|No NUMA configuration'
    ev kwarn_count "$(dmesg | grep -c "$bad")"
    dmesg | grep "$bad" | head -n 5 | while IFS= read -r l; do ev kwarn "$l"; done
    dmesg | grep 'SRAT: Node\|SRAT: PXM\|virtio_mem.*nid:' | head -n 12 | while IFS= read -r l; do ev klog "$l"; done
    ev numafacts_done
}

ev boot "$(uname -r)" "$(cat /proc/cmdline)"
ev cpus "$(grep -c ^processor /proc/cpuinfo)"
monitor &
sleep 0.5
ev ready
while read -r cmd arg; do
    case "$cmd" in
        go)
            load_modules
            ev modules_loaded ;;
        fill) fill "$arg" ;;
        # Touch MiB of tmpfs without checksums (only host memory matters to the caller).
        zerofill) if dd if=/dev/zero of=/data/fzero bs=1M count="$arg" 2>/dev/null; then ev filled "$arg"
                  else ev error "zerofill $arg failed"; fi ;;
        verify) verify ;;
        writer_start) writer_start ;;
        writer_stop) writer_stop ;;
        blkfill) BLK_MIB=$arg; blkfill "$arg" ;;
        blkverify) blkverify ;;
        vmount) vmount ;;
        vfill) vfill "$arg" ;;
        vverify) vverify "$arg" ;;
        vumount) vumount ;;
        dmount) dmount ;;
        dfill) dfill "$arg" ;;
        dreader_start) dreader_start "$arg" ;;
        dreader_wait) dreader_wait ;;
        dreader_stop) touch /tmp/stopr; ev dreader_stopping ;;
        dverify) dverify $arg ;;
        # Drops the (clean) page cache: a shrink then needs not migrate it.
        dropcache) sync; echo 3 > /proc/sys/vm/drop_caches; ev cache_dropped ;;
        numa) LABEL=$arg; numa "$arg" ;;
        numafacts) numafacts ;;
        uptime) read -r up _ < /proc/uptime; ev uptime "$up" ;;
        # The root file system's source and type ("vroot virtiofs" on a shared-folder root).
        rootfs) ev rootfs "$(grep '^[^ ]* / ' /proc/mounts | grep -v '^rootfs ' | tail -n 1 | cut -d' ' -f1,3)" ;;
        # The monitor reports MemTotal only when it changes: this reports it now.
        memtotal) ev memtotal_kib "$(memtotal_kib)" ;;
        drop) rm -f /data/f*; ev dropped ;;
        reboot) ev rebooting; sync; reboot -f ;;
        poweroff) ev powering_off; poweroff -f ;;
        '') ;;
        *) ev unknown_command "$cmd" ;;
    esac
done
ev console_closed
sleep 1000000
