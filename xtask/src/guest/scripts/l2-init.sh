#!/bin/busybox sh
# L2 guest init: reports memory state and obeys commands read from the serial console.
# Output lines for the harness: "@@HM <uptime_ms> <key> <value...>".
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
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

verify() {
    if (cd /data && md5sum -c -s /sums); then ev verify ok "$(ls /data | wc -l)"; else
        ev verify bad "$(cd /data && md5sum -c /sums 2>&1 | grep -c FAILED)"
    fi
}

ev boot "$(uname -r)" "$(cat /proc/cmdline)"
ev cpus "$(grep -c ^processor /proc/cpuinfo)"
monitor &
sleep 0.5
ev ready
while read -r cmd arg; do
    case "$cmd" in
        go)
            for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m.ko" || ev insmod_failed "$m"; done
            ev modules_loaded ;;
        fill) fill "$arg" ;;
        verify) verify ;;
        uptime) read -r up _ < /proc/uptime; ev uptime "$up" ;;
        drop) rm -f /data/f*; ev dropped ;;
        reboot) ev rebooting; sync; reboot -f ;;
        poweroff) ev powering_off; poweroff -f ;;
        '') ;;
        *) ev unknown_command "$cmd" ;;
    esac
done
ev console_closed
sleep 1000000
