//! A minimal AML encoder: just what the DSDT needs (names, packages, buffers, scopes,
//! devices, integers, EISA ids) plus resource-template descriptors.

/// Encode a PkgLength for `content_len` bytes that follow it.
pub(crate) fn pkg_length(content_len: usize) -> Vec<u8> {
    // The encoded length includes the PkgLength bytes themselves.
    if content_len + 1 < 0x40 {
        return vec![(content_len + 1) as u8];
    }
    for extra in 1..=3usize {
        let total = content_len + 1 + extra;
        if total < 1 << (4 + 8 * extra) {
            let mut out = vec![((extra as u8) << 6) | (total & 0xF) as u8];
            for i in 0..extra {
                out.push(((total >> (4 + 8 * i)) & 0xFF) as u8);
            }
            return out;
        }
    }
    // A DSDT this large (>256 MiB) is never built; saturate to the maximum encodable length.
    vec![0xCF, 0xFF, 0xFF, 0xFF]
}

fn with_pkg_length(op: &[u8], content: &[u8]) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(content.len()));
    out.extend_from_slice(content);
    out
}

/// A 4-character name segment (or a rooted path like `\_SB_`).
pub(crate) fn name_string(name: &str) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// Integer constant with the shortest encoding.
pub(crate) fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xFF => vec![0x0A, v as u8],
        0x100..=0xFFFF => [&[0x0B][..], &(v as u16).to_le_bytes()].concat(),
        0x1_0000..=0xFFFF_FFFF => [&[0x0C][..], &(v as u32).to_le_bytes()].concat(),
        _ => [&[0x0E][..], &v.to_le_bytes()].concat(),
    }
}

/// `Name(name, object)`.
pub(crate) fn name(name: &str, object: &[u8]) -> Vec<u8> {
    [&[0x08][..], &name_string(name), object].concat()
}

/// `Package() { elements }`.
pub(crate) fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut content = vec![elements.len() as u8];
    for e in elements {
        content.extend_from_slice(e);
    }
    with_pkg_length(&[0x12], &content)
}

/// `Buffer() { bytes }`.
pub(crate) fn buffer(bytes: &[u8]) -> Vec<u8> {
    let content = [integer(bytes.len() as u64), bytes.to_vec()].concat();
    with_pkg_length(&[0x11], &content)
}

/// `Scope(path) { body }`.
pub(crate) fn scope(path: &str, body: &[u8]) -> Vec<u8> {
    with_pkg_length(&[0x10], &[name_string(path), body.to_vec()].concat())
}

/// `Device(name) { body }`.
pub(crate) fn device(name: &str, body: &[u8]) -> Vec<u8> {
    with_pkg_length(&[0x5B, 0x82], &[name_string(name), body.to_vec()].concat())
}

/// `EisaId("PNP0A03")` as a DWord constant.
pub(crate) fn eisa_id(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let letter = |c: u8| u32::from(c - b'@') & 0x1F;
    let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0);
    let v: u32 = (letter(b[0]) << 26)
        | (letter(b[1]) << 21)
        | (letter(b[2]) << 16)
        | (hex(b[3]) << 12)
        | (hex(b[4]) << 8)
        | (hex(b[5]) << 4)
        | hex(b[6]);
    // EISA ids are stored big-endian in the dword.
    [&[0x0C][..], &v.to_be_bytes()].concat()
}

/// Resource-template descriptors (ACPI 6.x section 6.4).
pub(crate) mod resource {
    const ADDR_MEMORY: u8 = 0;
    const ADDR_IO: u8 = 1;
    const ADDR_BUS: u8 = 2;
    /// Producer, positive decode, min and max fixed.
    const GENERAL_FLAGS: u8 = 0x0C;

    /// Word address space: bus numbers `min..=max`.
    pub(crate) fn word_bus(min: u16, max: u16) -> Vec<u8> {
        word_address(ADDR_BUS, 0, min, max)
    }

    /// Word address space: I/O ports `min..=max` (ISA and non-ISA ranges).
    pub(crate) fn word_io(min: u16, max: u16) -> Vec<u8> {
        word_address(ADDR_IO, 0x03, min, max)
    }

    fn word_address(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
        let len = max.wrapping_sub(min).wrapping_add(1);
        let mut d = vec![0x88, 0x0D, 0x00, kind, GENERAL_FLAGS, type_flags];
        for v in [0, min, max, 0, len] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// DWord memory range `min..=max`, read-write, not cacheable.
    pub(crate) fn dword_memory(min: u32, max: u32) -> Vec<u8> {
        let mut d = vec![0x87, 0x17, 0x00, ADDR_MEMORY, GENERAL_FLAGS, 0x01];
        for v in [0, min, max, 0, max - min + 1] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// QWord memory range `min..=max`, read-write, not cacheable.
    pub(crate) fn qword_memory(min: u64, max: u64) -> Vec<u8> {
        let mut d = vec![0x8A, 0x2B, 0x00, ADDR_MEMORY, GENERAL_FLAGS, 0x01];
        for v in [0, min, max, 0, max - min + 1] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// Fixed 16-bit-decoded I/O ports `base..base+len`.
    pub(crate) fn io(base: u16, len: u8) -> Vec<u8> {
        let mut d = vec![0x47, 0x01];
        d.extend_from_slice(&base.to_le_bytes());
        d.extend_from_slice(&base.to_le_bytes());
        d.extend_from_slice(&[1, len]);
        d
    }

    /// Edge-triggered, active-high ISA IRQ.
    pub(crate) fn irq(irq: u8) -> Vec<u8> {
        let mask = 1u16 << (irq & 0xF);
        [&[0x22][..], &mask.to_le_bytes()].concat()
    }

    /// Descriptors followed by the end tag.
    pub(crate) fn template(descriptors: &[Vec<u8>]) -> Vec<u8> {
        let mut out: Vec<u8> = descriptors.concat();
        out.extend_from_slice(&[0x79, 0x00]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_one_byte_below_64() {
        assert_eq!(pkg_length(10), vec![11]);
        assert_eq!(pkg_length(62), vec![63]);
    }

    #[test]
    fn pkg_length_two_bytes_counts_itself() {
        // 63 content bytes + 2 length bytes = 65 = 0x41
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0x200), vec![0x42, 0x20]);
    }

    #[test]
    fn pkg_length_three_bytes_for_large_content() {
        let l = pkg_length(0x1000);
        assert_eq!(l.len(), 3);
        let total =
            (usize::from(l[0] & 0xF)) | (usize::from(l[1]) << 4) | (usize::from(l[2]) << 12);
        assert_eq!(total, 0x1000 + 3);
    }

    #[test]
    fn eisa_id_pci_root_bridge() {
        // iasl encodes EisaId("PNP0A03") as 0x030AD041.
        assert_eq!(eisa_id("PNP0A03"), vec![0x0C, 0x41, 0xD0, 0x0A, 0x03]);
    }

    #[test]
    fn integers_use_shortest_form() {
        assert_eq!(integer(0), vec![0]);
        assert_eq!(integer(1), vec![1]);
        assert_eq!(integer(5), vec![0x0A, 5]);
        assert_eq!(integer(0x1234), vec![0x0B, 0x34, 0x12]);
        assert_eq!(integer(1 << 40)[0], 0x0E);
    }

    #[test]
    fn package_of_s5_matches_iasl() {
        // Name (_S5, Package () { 5, 0 })  =>  08 5F 53 35 5F 12 05 02 0A 05 00
        let p = name("_S5_", &package(&[integer(5), integer(0)]));
        assert_eq!(
            p,
            vec![
                0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0A, 0x05, 0x00
            ]
        );
    }

    #[test]
    fn descriptors_have_declared_lengths() {
        let w = resource::word_bus(0, 0xFF);
        assert_eq!(w.len(), 3 + usize::from(w[1]));
        let d = resource::dword_memory(0xC000_0000, 0xFEBF_FFFF);
        assert_eq!(d.len(), 3 + usize::from(d[1]));
        let q = resource::qword_memory(1 << 32, (1 << 36) - 1);
        assert_eq!(q.len(), 3 + usize::from(q[1]));
        assert_eq!(&q[q.len() - 8..], &(0xF_0000_0000u64).to_le_bytes());
    }
}
