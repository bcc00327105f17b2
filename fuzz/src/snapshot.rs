//! The snapshot state-file reader on arbitrary bytes: it must refuse or decode, never panic,
//! and whatever it decodes must encode and decode again to the same state.

/// One fuzz input: a whole state file.
pub fn run_reader(data: &[u8]) {
    let Ok(decoded) = snapshot::decode(data) else {
        return;
    };
    let again = snapshot::encode(&decoded.snapshot, &decoded.hotmem_version)
        .expect("a decoded snapshot encodes");
    let round = snapshot::decode(&again).expect("an encoded snapshot decodes");
    assert_eq!(round.snapshot, decoded.snapshot);
    for device in &decoded.snapshot.devices {
        for component in &device.components {
            let _ = component.decode::<virtio_mem::DeviceState>("virtio-mem", 1..=1);
        }
    }
}
