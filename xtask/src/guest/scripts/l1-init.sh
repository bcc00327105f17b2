#!/bin/busybox sh
# L1 init: loads KVM, then runs one scenario's host side against the VMM under test.
# Harness lines: "@@HM <uptime_ms> <key> <value...>" (L1 events), "@@L2 <uptime_ms> <line>"
# (the L2 console relayed, stamped with L1 time), "@@VM <uptime_ms> <line>" (VMM stderr).
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /tmp /run
ip link set lo up

ms() { read -r up _ < /proc/uptime; MS=${up%.*}${up#*.}0; }
ev() { ms; echo "@@HM $MS $*"; }

for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m.ko" || ev insmod_failed "$m"; done
[ -e /dev/kvm ] || ev error "no /dev/kvm in L1"

for word in $(cat /proc/cmdline); do
    case "$word" in
        hm.scenario=*) SCENARIO=${word#hm.scenario=} ;;
        hm.vmm=*) VMM=${word#hm.vmm=} ;;
        hm.fill_mib=*) FILL_MIB=${word#hm.fill_mib=} ;;
        hm.full=1) FULL=1 ;;
        hm.seccomp=*) HOTMEM_SECCOMP=${word#hm.seccomp=} ;;
        hm.bench=*) BENCH_ARGS=$(echo "${word#hm.bench=}" | tr , ' ') ;;
    esac
done
ev l1_ready "$(uname -r)" "$VMM" "$SCENARIO"

. /hm/lib.sh
. /hm/vmm-$VMM.sh
. /hm/scenarios.sh
. /hm/scenarios-migrate.sh

if type "scenario_$(echo "$SCENARIO" | tr - _)" >/dev/null 2>&1; then
    "scenario_$(echo "$SCENARIO" | tr - _)"
else
    ev error "unknown scenario $SCENARIO"
fi
finish
