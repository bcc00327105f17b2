//! The serial console protocol between L1/L2 scripts and the harness.
//!
//! - `@@HM <ms> <key> <values...>`: an L1 event (L1 uptime in milliseconds);
//! - `@@L2 <ms> <line>`: a line of the L2 console, stamped with L1 time when it was relayed;
//!   when `<line>` holds `@@HM <l2-ms> <key> <values...>` it is an L2 event;
//! - `@@VM <ms> <line>`: a line the VMM wrote to its standard error.
//!
//! Markers may appear after other text on a line (kernel messages interleave).

/// Which level emitted an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    L1,
    L2,
}

/// One harness event; `at_ms` is always on L1's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at_ms: u64,
    pub source: Source,
    pub key: String,
    /// Everything after the key, unsplit (it may be JSON).
    pub rest: String,
}

impl Event {
    /// The whitespace-separated value at `index` after the key.
    pub fn word(&self, index: usize) -> Option<&str> {
        self.rest.split_whitespace().nth(index)
    }

    /// `name=value` among the words after the key.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    }

    /// `field` parsed as an integer.
    pub fn field_u64(&self, name: &str) -> Option<u64> {
        self.field(name)?.parse().ok()
    }
}

/// What one console line means to the harness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialLine {
    Event(Event),
    GuestLog(String),
    VmmLog(String),
    HostLog(String),
}

/// Splits `<ms> <rest>` into the number and the rest.
fn stamped(text: &str) -> Option<(u64, &str)> {
    let (ms, rest) = text.split_once(' ').unwrap_or((text, ""));
    Some((ms.parse().ok()?, rest))
}

/// Parses `<ms> <key> <rest>` (the text after an `@@HM ` marker).
fn event_body(text: &str, source: Source, at_ms: Option<u64>) -> Option<Event> {
    let (ms, rest) = stamped(text)?;
    let (key, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if key.is_empty() {
        return None;
    }
    Some(Event {
        at_ms: at_ms.unwrap_or(ms),
        source,
        key: key.to_string(),
        rest: rest.trim().to_string(),
    })
}

/// Classifies one console line (already without its line terminator).
pub fn parse_line(line: &str) -> SerialLine {
    let line = line.trim_end_matches('\r');
    if let Some(pos) = line.find("@@L2 ") {
        let body = &line[pos + 5..];
        let Some((at_ms, inner)) = stamped(body) else {
            return SerialLine::HostLog(line.to_string());
        };
        if let Some(ipos) = inner.find("@@HM ")
            && let Some(event) = event_body(&inner[ipos + 5..], Source::L2, Some(at_ms))
        {
            return SerialLine::Event(event);
        }
        return SerialLine::GuestLog(inner.to_string());
    }
    if let Some(pos) = line.find("@@VM ") {
        let body = &line[pos + 5..];
        let text = stamped(body).map_or(body, |(_, t)| t);
        return SerialLine::VmmLog(text.to_string());
    }
    if let Some(pos) = line.find("@@HM ")
        && let Some(event) = event_body(&line[pos + 5..], Source::L1, None)
    {
        return SerialLine::Event(event);
    }
    SerialLine::HostLog(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_events_carry_their_own_time() {
        let SerialLine::Event(e) = parse_line("@@HM 12340 snap boot1 memfree_kib=5 rss_kib=7\r")
        else {
            panic!("not an event");
        };
        assert_eq!(
            (e.at_ms, e.source, e.key.as_str()),
            (12340, Source::L1, "snap")
        );
        assert_eq!(e.word(0), Some("boot1"));
        assert_eq!(e.field_u64("rss_kib"), Some(7));
        assert_eq!(e.field("missing"), None);
    }

    #[test]
    fn l2_events_are_stamped_with_the_relay_time() {
        let line = "@@L2 20500 [    3.1] junk @@HM 3100 memtotal_kib 1540000";
        let SerialLine::Event(e) = parse_line(line) else {
            panic!("not an event");
        };
        assert_eq!((e.at_ms, e.source), (20500, Source::L2));
        assert_eq!(
            (e.key.as_str(), e.rest.as_str()),
            ("memtotal_kib", "1540000")
        );
    }

    #[test]
    fn other_lines_are_logs_of_their_level() {
        assert_eq!(
            parse_line("@@L2 5 virtio_mem virtio0: plugged size: 0x0"),
            SerialLine::GuestLog("virtio_mem virtio0: plugged size: 0x0".into())
        );
        assert_eq!(
            parse_line("@@VM 9 qemu: warning"),
            SerialLine::VmmLog("qemu: warning".into())
        );
        assert_eq!(
            parse_line("[ 1.0] Run /init"),
            SerialLine::HostLog("[ 1.0] Run /init".into())
        );
        assert_eq!(
            parse_line("@@HM notanumber x"),
            SerialLine::HostLog("@@HM notanumber x".into())
        );
    }

    #[test]
    fn markers_after_kernel_noise_are_found() {
        let SerialLine::Event(e) = parse_line("[  1.2] kvm: x@@HM 77 done") else {
            panic!("not an event");
        };
        assert_eq!((e.at_ms, e.key.as_str(), e.rest.as_str()), (77, "done", ""));
    }
}
