//! Human sizes at the edge: `512M`, `4G`, `1.5T`, or plain bytes.

const UNITS: [(char, u32); 5] = [('K', 10), ('M', 20), ('G', 30), ('T', 40), ('P', 50)];

/// Parses a size: a byte count, or a number (decimals allowed) with a K/M/G/T/P suffix
/// (powers of 1024; an optional `i`/`iB`/`B` after the letter is accepted).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "invalid size '{text}': expected bytes or a number with K, M, G or T (e.g. 512M, 4G, 1.5T)"
        )
    };
    if t.is_empty() {
        return Err(bad());
    }
    let upper = t.to_ascii_uppercase();
    let stripped = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (number, shift) = match stripped.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = UNITS.iter().find(|(u, _)| *u == c).ok_or_else(bad)?.1;
            (&stripped[..stripped.len() - 1], shift)
        }
        _ => (stripped, 0),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let mut bytes = whole.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if !frac.is_empty() {
        // Exact fractions of the unit only: 1.5G is fine, 1.3 bytes is not.
        let digits = u32::try_from(frac.len()).map_err(|_| bad())?;
        let denominator = 10u128.checked_pow(digits).ok_or_else(bad)?;
        let numerator = frac.parse::<u128>().map_err(|_| bad())? << shift;
        if numerator % denominator != 0 {
            return Err(format!(
                "invalid size '{text}': not a whole number of bytes"
            ));
        }
        let extra = u64::try_from(numerator / denominator).map_err(|_| bad())?;
        bytes = bytes.checked_add(extra).ok_or_else(bad)?;
    }
    Ok(bytes)
}

/// Formats bytes with the largest unit that divides them exactly (e.g. `4G`, `1536M`).
pub fn format_size(bytes: u64) -> String {
    for &(unit, shift) in UNITS.iter().rev() {
        let unit_bytes = 1u64 << shift;
        if bytes >= unit_bytes && bytes.is_multiple_of(unit_bytes) {
            return format!("{}{unit}", bytes / unit_bytes);
        }
    }
    bytes.to_string()
}

/// Formats bytes for people: exact units when they fit (`4G`), else two decimals of the
/// largest unit below the size (`1.50G`).
pub fn format_size_approx(bytes: u64) -> String {
    let exact = format_size(bytes);
    if !exact.chars().all(|c| c.is_ascii_digit()) || bytes < 1024 {
        return exact;
    }
    for &(unit, shift) in UNITS.iter().rev() {
        if bytes >= 1u64 << shift {
            return format!("{:.2}{unit}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    exact
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_fractions_and_bytes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1.5T").unwrap(), 3 << 39);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2k").unwrap(), 2048);
    }

    #[test]
    fn rejects_garbage_overflow_and_fractional_bytes() {
        for bad in [
            "",
            "G",
            "4X",
            "-1G",
            "1.G",
            ".5G",
            "99999999999999999999",
            "16777216T",
            "1.3",
            "4 G B",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_with_the_largest_exact_unit() {
        assert_eq!(format_size(4 << 30), "4G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(parse_size(&format_size(3 << 39)).unwrap(), 3 << 39);
    }

    #[test]
    fn approximate_sizes_keep_exact_units_and_round_the_rest() {
        assert_eq!(format_size_approx(4 << 30), "4G");
        assert_eq!(format_size_approx(1536 << 20), "1536M");
        assert_eq!(format_size_approx((1 << 30) + 1), "1.00G");
        assert_eq!(format_size_approx(1000), "1000");
        assert_eq!(format_size_approx(1025), "1.00K");
    }
}
