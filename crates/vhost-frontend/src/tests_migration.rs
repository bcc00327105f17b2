//! Dirty logging and ring hand-over against the in-process fake backend.

use std::sync::Arc;

use virtio::{QueueSetup, VirtioDevice};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::fake_backend::{
    FakeBackend, FakeBackendConfig, PROTOCOL_ACK_AND_SLOTS, PROTOCOL_LOG_SHMFD, VIRTIO_LOG_ALL,
    VIRTIO_PROTOCOL_FEATURES,
};
use crate::*;

const MIB: u64 = 1 << 20;
const RAM_BYTES: u64 = 16 * MIB;
const VERSION_1: u64 = 1 << 32;
const SET_FEATURES: u32 = 2;
const SET_LOG_BASE: u32 = 6;
const GET_FEATURES: u32 = 1;
const SET_VRING_ADDR: u32 = 9;

fn loggable() -> FakeBackendConfig {
    FakeBackendConfig {
        features: VIRTIO_PROTOCOL_FEATURES | VIRTIO_LOG_ALL,
        protocol_features: PROTOCOL_ACK_AND_SLOTS | PROTOCOL_LOG_SHMFD,
        ..FakeBackendConfig::default()
    }
}

/// A virtio-fs device (queues 0 and 1) on a fake backend.
fn fs_device(config: FakeBackendConfig) -> (VhostUserDevice, FakeBackend) {
    let (fake, stream) = FakeBackend::spawn(config);
    let mut attach = AttachConfig::named("fs0");
    attach.max_queue_count = 2;
    let negotiated = negotiate(stream, &attach).unwrap();
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_BYTES as usize)]);
    let device = VhostUserDevice::new(
        &VhostUserDeviceConfig {
            name: "fs0".into(),
            kind: VhostUserKind::Fs {
                tag: "share".into(),
                request_queues: 1,
            },
            queue_size: 16,
        },
        &negotiated,
        Arc::new(ram.unwrap()),
    )
    .unwrap();
    (device, fake)
}

fn queues() -> [QueueSetup; 2] {
    let q0 = QueueSetup {
        index: 0,
        size: 16,
        enabled: true,
        desc_table_addr: 0x1000,
        avail_ring_addr: 0x2000,
        used_ring_addr: 0x3000,
    };
    let q1 = QueueSetup {
        index: 1,
        desc_table_addr: 0x4000,
        avail_ring_addr: 0x5000,
        used_ring_addr: 0x6000,
        ..q0
    };
    [q0, q1]
}

fn activated(config: FakeBackendConfig) -> (VhostUserDevice, FakeBackend) {
    let (mut device, fake) = fs_device(config);
    device.ack_features(VERSION_1).unwrap();
    device.activate_with_queues(&queues()).unwrap();
    (device, fake)
}

fn pages(bits: &[u64]) -> Vec<u64> {
    (0..bits.len() as u64 * 64)
        .filter(|i| bits[(i / 64) as usize] & (1 << (i % 64)) != 0)
        .collect()
}

#[test]
fn rings_start_with_the_used_rings_guest_address_as_log_address_and_no_log_flag() {
    let (_device, fake) = activated(loggable());
    assert_eq!(fake.log().vring_addrs, [(0, 0, 0x3000), (1, 0, 0x6000)]);
    assert_eq!(fake.log().vring_bases, [(0, 0), (1, 0)]);
}

#[test]
fn start_logging_sends_the_log_then_log_all_then_logged_ring_addresses() {
    // libvhost-user answers SET_LOG_BASE with 8 bytes, rust-vmm with 16: both keep the
    // connection in step.
    for reply_bytes in [8, 16] {
        let (mut device, fake) = activated(FakeBackendConfig {
            log_base_reply_bytes: reply_bytes,
            dirty_gpa_on_log_base: Some(0x5000),
            ..loggable()
        });
        let log = BackendDirtyLog::new(RAM_BYTES).unwrap();
        let before = fake.requests().len();
        device.start_logging(&log).unwrap();
        assert!(device.is_logging());
        assert_eq!(
            fake.requests()[before..],
            [
                SET_LOG_BASE,
                GET_FEATURES,
                SET_FEATURES,
                SET_VRING_ADDR,
                SET_VRING_ADDR
            ]
        );
        let seen = fake.log();
        assert_eq!(seen.log_bases, [(log.size_bytes(), 0, 1)]);
        assert_eq!(
            seen.features_set.last(),
            Some(&(VERSION_1 | VIRTIO_PROTOCOL_FEATURES | VIRTIO_LOG_ALL))
        );
        assert_eq!(seen.vring_addrs[2..], [(0, 1, 0x3000), (1, 1, 0x6000)]);
        // The fake's write through the shared log shows up, once.
        assert_eq!(pages(&log.take_range(0, RAM_BYTES).unwrap()), [5]);
        assert!(pages(&log.take_range(0, RAM_BYTES).unwrap()).is_empty());
        // Later requests still get their own answers.
        assert_eq!(device.stop_rings().unwrap().next_avail_idx, [0, 0]);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }
}

#[test]
fn a_backend_without_log_all_or_log_shmfd_is_refused_before_anything_is_sent() {
    let no_log_all = FakeBackendConfig {
        features: VIRTIO_PROTOCOL_FEATURES,
        ..loggable()
    };
    let no_shmfd = FakeBackendConfig {
        protocol_features: PROTOCOL_ACK_AND_SLOTS,
        ..loggable()
    };
    for (config, missing) in [(no_log_all, "VHOST_F_LOG_ALL"), (no_shmfd, "LOG_SHMFD")] {
        let (mut device, fake) = activated(config);
        let blocker = device.migration_blocker().expect("a blocker");
        assert!(
            blocker.contains(missing) && blocker.contains("'fs0'"),
            "{blocker}"
        );
        let sent = fake.requests().len();
        let err = device
            .start_logging(&BackendDirtyLog::new(RAM_BYTES).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains(missing), "{err}");
        assert_eq!(fake.requests().len(), sent);
        assert!(!device.is_logging());
    }
    let (device, _fake) = activated(loggable());
    assert_eq!(device.migration_blocker(), None);
}

#[test]
fn a_log_shorter_than_guest_memory_is_refused() {
    let (mut device, fake) = activated(loggable());
    let sent = fake.requests().len();
    let err = device
        .start_logging(&BackendDirtyLog::new(RAM_BYTES / 2).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("before guest memory"), "{err}");
    assert_eq!(fake.requests().len(), sent);
}

#[test]
fn stop_logging_clears_log_all_and_the_rings_log_flag() {
    let (mut device, fake) = activated(loggable());
    device
        .start_logging(&BackendDirtyLog::new(RAM_BYTES).unwrap())
        .unwrap();
    device.stop_logging().unwrap();
    assert!(!device.is_logging());
    let seen = fake.log();
    assert_eq!(
        seen.features_set.last(),
        Some(&(VERSION_1 | VIRTIO_PROTOCOL_FEATURES))
    );
    assert_eq!(seen.vring_addrs[4..], [(0, 0, 0x3000), (1, 0, 0x6000)]);
}

#[test]
fn a_restart_while_logging_keeps_log_all_and_the_rings_log_flag() {
    let (mut device, fake) = activated(loggable());
    device
        .start_logging(&BackendDirtyLog::new(RAM_BYTES).unwrap())
        .unwrap();
    device.reset();
    device.ack_features(VERSION_1).unwrap();
    device.activate_with_queues(&queues()).unwrap();
    let seen = fake.log();
    assert_eq!(
        seen.features_set.last(),
        Some(&(VERSION_1 | VIRTIO_PROTOCOL_FEATURES | VIRTIO_LOG_ALL))
    );
    assert_eq!(seen.vring_addrs[4..], [(0, 1, 0x3000), (1, 1, 0x6000)]);
}

#[test]
fn stopped_rings_state_is_the_base_of_the_next_start_only() {
    let (mut source, _fake) = activated(FakeBackendConfig {
        served_per_ring: 3,
        ..loggable()
    });
    let state = source.stop_rings().unwrap();
    assert_eq!(
        state,
        RingState {
            next_avail_idx: vec![3, 3]
        }
    );
    // Stopped rings are not stopped again.
    assert_eq!(source.stop_rings().unwrap().next_avail_idx, [0, 0]);

    let (mut destination, fake) = fs_device(loggable());
    destination.set_ring_bases(&state.next_avail_idx).unwrap();
    destination.ack_features(VERSION_1).unwrap();
    destination.activate_with_queues(&queues()).unwrap();
    assert_eq!(fake.log().vring_bases, [(0, 3), (1, 3)]);
    // A later start (after a reset) begins at 0 again.
    destination.reset();
    destination.ack_features(VERSION_1).unwrap();
    destination.activate_with_queues(&queues()).unwrap();
    assert_eq!(fake.log().vring_bases[2..], [(0, 0), (1, 0)]);
    assert!(destination.set_ring_bases(&[1, 2, 3]).is_err());
}

#[test]
fn negotiation_acks_log_shmfd_only_when_offered() {
    for (offered, acked) in [(PROTOCOL_LOG_SHMFD, true), (0, false)] {
        let (fake, stream) = FakeBackend::spawn(FakeBackendConfig {
            protocol_features: PROTOCOL_ACK_AND_SLOTS | offered,
            ..loggable()
        });
        let negotiated = negotiate(stream, &AttachConfig::named("b")).unwrap();
        assert_eq!(
            negotiated
                .protocol_features
                .contains(VhostUserProtocolFeatures::LOG_SHMFD),
            acked
        );
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }
}
