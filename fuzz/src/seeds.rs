//! The seed corpora under `fuzz/corpus/<target>/`: a few well-formed inputs per target, so the
//! fuzzer starts from requests that reach deep states. Regenerate with
//! `HOTMEM_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml seeds`.

use crate::device::{Op, Setup, near_request_bytes};
use crate::input::Output;
use crate::queue::{F_INDIRECT, F_NEXT, F_WRITE, QueueOp};
use crate::transport::PciOp;

/// Every seed: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, bytes) in device_seeds() {
        seeds.push(("virtio_mem_device", name, bytes));
    }
    for (name, bytes) in queue_seeds() {
        seeds.push(("virtio_mem_queue", name, bytes));
    }
    for (name, bytes) in pci_seeds() {
        seeds.push(("virtio_pci", name, bytes));
    }
    for (name, bytes) in api_seeds() {
        seeds.push(("api_request", name, bytes));
    }
    for (name, bytes) in mem_device_seeds() {
        seeds.push(("mem_device_option", name, bytes));
    }
    for (name, bytes) in snapshot_seeds() {
        seeds.push(("snapshot_reader", name, bytes));
    }
    for (name, bytes) in migration_seeds() {
        seeds.push(("migration_incoming", name, bytes));
    }
    seeds
}

/// Streams a real source sends (the `migration` crate's driver over its fake VM): boot RAM
/// with data, plugged blocks with data, a block unplugged (a discard), and a guest that keeps
/// writing, plugging and unplugging during the migration.
fn migration_seeds() -> Vec<(String, Vec<u8>)> {
    use crate::migration::{BLOCK_BYTES, BLOCKS, BOOT_BYTES, recorded_stream};
    use migration::RegionId;
    use migration::fake::{FakeSource, GuestOp};
    let vm = || {
        let mut vm = FakeSource::new(BOOT_BYTES, &[(BLOCK_BYTES * BLOCKS, BLOCK_BYTES)]);
        for op in [
            GuestOp::Write {
                region: RegionId::BootRam(0),
                offset_bytes: 5,
                byte: 1,
            },
            GuestOp::Plug {
                device: 0,
                block: 1,
            },
            GuestOp::Plug {
                device: 0,
                block: 2,
            },
            GuestOp::Write {
                region: RegionId::Device(0),
                offset_bytes: BLOCK_BYTES + 7,
                byte: 2,
            },
            GuestOp::Unplug {
                device: 0,
                block: 2,
            },
        ] {
            vm.apply(op);
        }
        vm
    };
    let quiet = recorded_stream(vm());
    let mut busy = vm();
    busy.script = (0..12u64)
        .map(|i| match i % 3 {
            0 => GuestOp::Plug {
                device: 0,
                block: 3 + i,
            },
            1 => GuestOp::Write {
                region: RegionId::Device(0),
                offset_bytes: (2 + i) * BLOCK_BYTES + 9,
                byte: i as u8 + 1,
            },
            _ => GuestOp::Unplug {
                device: 0,
                block: 1 + i,
            },
        })
        .collect();
    let busy = recorded_stream(busy);
    vec![("quiet".into(), quiet), ("busy".into(), busy)]
}

/// A version-1 state file (the committed fixture) and a current one.
fn snapshot_seeds() -> Vec<(String, Vec<u8>)> {
    let v1 = include_bytes!("../../crates/snapshot/tests/fixtures/state-v1.bin").to_vec();
    let current = snapshot::VmSnapshot {
        created_unix_secs: 1,
        vm_config: None,
        machine: snapshot::Component::encode("machine", 1, &[1u8, 2, 3]).expect("encodes"),
        devices: vec![snapshot::DeviceSnapshot {
            id: "mem0".into(),
            components: vec![snapshot::Component::encode("virtio-mem", 1, &0u64).expect("encodes")],
        }],
        memory: snapshot::MemoryManifest {
            regions: vec![snapshot::RegionFile {
                name: "mem0".into(),
                guest_addr: snapshot::GuestAddr(1 << 32),
                size_bytes: 1 << 30,
                file_name: "memory-mem0".into(),
                data_bytes: 4096,
            }],
        },
    };
    let current = snapshot::encode(&current, "seed").expect("encodes");
    vec![("v1".into(), v1), ("current".into(), current)]
}

fn setup(policy: u8, block_size: u8, prealloc: bool) -> Setup {
    Setup {
        policy,
        prealloc,
        block_size,
        region_blocks: 512,
        requested_blocks: 64,
        slot_limit: 31,
    }
}

fn near(kind: u16, block: u16, nb_blocks: u16) -> Op {
    Op::Near {
        kind,
        block,
        nb_blocks,
        skew_bytes: 0,
    }
}

fn encode_ops(setup: &Setup, ops: &[Op]) -> Vec<u8> {
    let mut out = Output::default();
    setup.encode(&mut out);
    for op in ops {
        op.encode(&mut out);
    }
    out.bytes
}

fn device_seeds() -> Vec<(String, Vec<u8>)> {
    let s = setup(0, 0, false);
    let plug_unplug = [
        near(0, 0, 8),
        near(3, 0, 16),
        near(1, 4, 4),
        Op::SetRequestedBlocks(1000),
        near(0, 600, 300),
        Op::Raw(near_request_bytes(&s, 2, 0, 0, 0)),
    ];
    let faults = [
        Op::AckFeatures((1 << 32) | 2),
        Op::FailMaps(0x01),
        near(0, 0, 1),
        near(0, 0, 1),
        Op::FailDiscards(1),
        near(1, 0, 1),
        near(1, 0, 1),
        Op::FailUnmaps(0x03),
        near(0, 512, 2),
        near(1, 512, 2),
        Op::SaveRestore,
        Op::SystemReset,
    ];
    let legacy = [
        Op::AckFeatures(1 << 32),
        Op::SetRequestedBlocks(1500),
        near(0, 1000, 10),
        Op::Reset,
        Op::AckFeatures((1 << 32) | 2),
        Op::Raw(near_request_bytes(&s, 2, 0, 0, 0)),
    ];
    let prealloc = setup(1, 2, true);
    let populate = [
        Op::FailPopulates(1),
        near(0, 0, 2),
        near(0, 0, 2),
        near(0, 2, 65535),
        near(0, 4, 0),
        near(4, 0, 1),
    ];
    vec![
        ("plug_unplug".into(), encode_ops(&s, &plug_unplug)),
        ("faults".into(), encode_ops(&s, &faults)),
        ("legacy".into(), encode_ops(&setup(1, 0, false), &legacy)),
        ("prealloc".into(), encode_ops(&prealloc, &populate)),
        (
            "single_slot".into(),
            encode_ops(&setup(2, 0, false), &faults),
        ),
    ]
}

fn chain(request_at: u16, near: [u16; 3], flags: [u16; 2]) -> Vec<QueueOp> {
    vec![
        QueueOp::Request {
            offset: request_at,
            near,
            skew_bytes: 0,
        },
        QueueOp::Desc {
            index: 0,
            addr: u64::from(request_at),
            len: 24,
            flags: flags[0],
            next: 1,
        },
        QueueOp::Desc {
            index: 1,
            addr: 0x5000,
            len: 10,
            flags: flags[1],
            next: 0,
        },
        QueueOp::Avail(0),
        QueueOp::Process,
    ]
}

fn encode_queue(setup: &Setup, shape: u8, ops: &[QueueOp]) -> Vec<u8> {
    let mut out = Output::default();
    setup.encode(&mut out);
    out.u8(shape);
    for op in ops {
        op.encode(&mut out);
    }
    out.bytes
}

fn queue_seeds() -> Vec<(String, Vec<u8>)> {
    let s = setup(0, 0, false);
    let mut two = chain(0x4000, [0, 0, 4], [F_NEXT, F_WRITE]);
    two.extend(chain(0x4100, [1, 0, 4], [F_NEXT, F_WRITE]));
    let mut wrong_direction = chain(0x4000, [0, 0, 1], [F_WRITE | F_NEXT, 0]);
    wrong_direction.push(QueueOp::ResetDevice);
    wrong_direction.extend(chain(0x4000, [3, 0, 1], [F_NEXT, F_WRITE]));
    let indirect = vec![
        QueueOp::Request {
            offset: 0x4000,
            near: [0, 8, 2],
            skew_bytes: 0,
        },
        QueueOp::Poke {
            offset: 0x6000,
            bytes: descriptor_bytes(0x4000, 24, F_NEXT, 1),
        },
        QueueOp::Poke {
            offset: 0x6010,
            bytes: descriptor_bytes(0x5000, 10, F_WRITE, 0),
        },
        QueueOp::Desc {
            index: 0,
            addr: 0x6000,
            len: 32,
            flags: F_INDIRECT,
            next: 0,
        },
        QueueOp::Avail(0),
        QueueOp::Process,
    ];
    vec![
        ("two_chains".into(), encode_queue(&s, 3, &two)),
        (
            "wrong_direction".into(),
            encode_queue(&s, 0x84, &wrong_direction),
        ),
        ("indirect".into(), encode_queue(&s, 4, &indirect)),
    ]
}

fn descriptor_bytes(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut out = Output::default();
    out.u64(addr).u32(len).u16(flags).u16(next);
    out.bytes
}

fn bar_write(offset: u16, width: u8, value: u64) -> PciOp {
    PciOp::BarWrite {
        bar: 0,
        offset,
        width,
        value,
    }
}

fn pci_seeds() -> Vec<(String, Vec<u8>)> {
    // Width codes: 0 → 1 byte, 1 → 2, 2 → 4, 3 → 8.
    let probe = vec![
        PciOp::PioWrite {
            port: 0,
            width: 2,
            value: 0x8000_0800,
        },
        PciOp::PioRead { port: 4, width: 2 },
        PciOp::PioWrite {
            port: 0,
            width: 2,
            value: 0x8000_0810,
        },
        PciOp::PioWrite {
            port: 4,
            width: 2,
            value: 0xffff_ffff,
        },
        PciOp::PioRead { port: 4, width: 2 },
        PciOp::ConfigWrite {
            offset: 0x04,
            width: 1,
            value: 0x6,
        },
        PciOp::MmioRead {
            offset: 0x2000,
            width: 3,
        },
    ];
    let mut driver = vec![
        PciOp::ConfigWrite {
            offset: 0x04,
            width: 1,
            value: 0x6,
        },
        bar_write(0x14, 0, 1),
        bar_write(0x14, 0, 3),
        bar_write(0x08, 2, 1),
        bar_write(0x0c, 2, 1),
        bar_write(0x14, 0, 0xb),
        bar_write(0x20, 3, 0x0),
        bar_write(0x28, 3, 0x1000),
        bar_write(0x30, 3, 0x2000),
        bar_write(0x1c, 1, 1),
        bar_write(0x14, 0, 0xf),
    ];
    let mut request = Output::default();
    request.raw(&near_request_bytes(&setup(0, 0, false), 0, 0, 2, 0));
    for (i, chunk) in request.bytes.chunks(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        driver.push(PciOp::Poke {
            offset: 0x4000 + 8 * i as u16,
            bytes,
        });
    }
    for (i, desc) in [
        descriptor_bytes(0x4000, 24, F_NEXT, 1),
        descriptor_bytes(0x5000, 10, F_WRITE, 0),
    ]
    .iter()
    .enumerate()
    {
        for (j, half) in desc.chunks(8).enumerate() {
            driver.push(PciOp::Poke {
                offset: (16 * i + 8 * j) as u16,
                bytes: half.try_into().expect("8 bytes"),
            });
        }
    }
    driver.push(PciOp::Poke {
        offset: 0x1000,
        bytes: [0, 0, 1, 0, 0, 0, 0, 0],
    });
    driver.push(PciOp::MmioWrite {
        offset: 0x3000,
        width: 1,
        value: 0,
    });
    driver.push(PciOp::Resize(512));
    let s = setup(0, 0, false);
    let encode = |ops: &[PciOp]| {
        let mut out = Output::default();
        s.encode(&mut out);
        out.u8(2);
        for op in ops {
            op.encode(&mut out);
        }
        out.bytes
    };
    vec![
        ("conf1_probe".into(), encode(&probe)),
        ("driver_plug".into(), encode(&driver)),
    ]
}

fn api_seeds() -> Vec<(String, Vec<u8>)> {
    let http = |chunk: u8, text: &str| {
        let mut bytes = vec![chunk];
        bytes.extend_from_slice(text.as_bytes());
        bytes
    };
    vec![
        (
            "resize".into(),
            http(
                7,
                "PATCH /v1/memory-devices/mem0 HTTP/1.1\r\nHost: hotmem\r\nContent-Type: \
                 application/json\r\nContent-Length: 24\r\n\r\n{\"requested_size\": \"4G\"}",
            ),
        ),
        (
            "resize_bytes".into(),
            http(
                63,
                "PATCH /v1/memory-devices/m HTTP/1.1\r\nContent-Length: 30\r\n\r\n\
                 {\"requested_size\": 1073741824}",
            ),
        ),
        (
            "list".into(),
            http(0, "GET /v1/memory-devices HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
        (
            "shutdown".into(),
            http(
                3,
                "PUT /v1/vm/shutdown HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            ),
        ),
        ("router".into(), b"\x80GET\0/v1/vm?x=1\0".to_vec()),
    ]
}

fn mem_device_seeds() -> Vec<(String, Vec<u8>)> {
    [
        (
            "full",
            "id=mem0,size=64G,requested=1G,block=4M,slots=fixed,prealloc=on,backing=memfd",
        ),
        ("minimal", "id=m,size=1T"),
        (
            "hugetlbfs",
            "id=h,size=4G,block=2M,backing=hugetlbfs,hugetlbfs=/dev/hugepages",
        ),
        (
            "single",
            "id=s_1,size=128M,requested=128M,slots=single,prealloc=off,backing=anon",
        ),
    ]
    .iter()
    .map(|(name, spec)| (name.to_string(), spec.as_bytes().to_vec()))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn corpus_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
    }

    #[test]
    fn seeds_run_cleanly_through_their_targets() {
        for (target, name, bytes) in all() {
            eprintln!("{target}/{name}");
            match target {
                "virtio_mem_device" => crate::device::run(&bytes),
                "virtio_mem_queue" => crate::queue::run(&bytes),
                "virtio_pci" => crate::transport::run(&bytes),
                "api_request" => crate::text::run_api(&bytes),
                "mem_device_option" => crate::text::run_mem_device(&bytes),
                "snapshot_reader" => crate::snapshot::run_reader(&bytes),
                "migration_incoming" => crate::migration::run_incoming(&bytes),
                other => panic!("unknown target {other}"),
            }
        }
    }

    #[test]
    fn committed_seed_corpora_match_the_generators() {
        let write = std::env::var_os("HOTMEM_WRITE_SEEDS").is_some();
        for (target, name, bytes) in all() {
            let path = corpus_dir().join(target).join(format!("seed_{name}"));
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let committed = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("{}: {e} (HOTMEM_WRITE_SEEDS=1)", path.display()));
                assert_eq!(committed, bytes, "{} is stale", path.display());
            }
        }
    }
}
