//! Shared pieces of hotmem's fuzz targets (`fuzz_targets/*.rs` are one-line wrappers).
//!
//! - [`input`]: a cursor that decodes fuzzer bytes into small values.
//! - [`device`]: virtio-mem over the fake slot backend and fake memory, driven by operations
//!   decoded from the input, with the invariants checked after every step.
//! - [`queue`]: the same device serving a real split virtqueue whose descriptor table, rings and
//!   request buffers the fuzzer writes.
//! - [`transport`]: config-space, BAR and conf1 accesses against a virtio-pci device.
//! - [`text`]: the HTTP reader plus router, and `--mem-device` parsing.
//! - [`snapshot`]: the snapshot state-file reader.
//! - [`migration`]: a live-migration destination reading an untrusted source's stream.
//! - [`seeds`]: the seed corpora committed under `fuzz/corpus/<target>/`.

pub mod device;
pub mod input;
pub mod migration;
pub mod queue;
pub mod seeds;
pub mod snapshot;
pub mod text;
pub mod transport;
