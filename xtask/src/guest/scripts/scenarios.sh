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
    gcmd fill 1536
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
