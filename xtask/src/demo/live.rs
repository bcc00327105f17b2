//! The demo's live view: each timeline line printed when its event arrives, and a spinner with
//! the current phase while nothing is printed (booting, filling memory).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::e2e::serial::{Event, Source};
use crate::e2e::timeline::DeviceStatus;

const GIB: u64 = 1 << 30;

/// The column header of the timeline.
pub fn header() -> String {
    format!(
        "{:>8}  {:<26} {:>14} {:>10} {:>10} {:>6} {:>10} {:>10}",
        "time_s", "event", "guest_MemTotal", "requested", "plugged", "slots", "VMM_RSS", "L1_free"
    )
}

fn gib(bytes: u64) -> String {
    format!("{:.2}G", bytes as f64 / GIB as f64)
}

/// One status row: the snapshot L1 took and the VMM's report that followed it.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusRow {
    pub label: String,
    pub plugged_bytes: u64,
    pub slots_mapped: Option<u64>,
    pub vmm_rss_kib: u64,
    pub l1_memfree_kib: u64,
}

/// Turns events into timeline lines and phases, one event at a time.
#[derive(Default)]
pub struct LiveTimeline {
    /// L1 time of its first event: the timeline's zero.
    origin_ms: Option<u64>,
    pending_snap: Option<Event>,
    /// Every status row so far, in order.
    pub rows: Vec<StatusRow>,
}

impl LiveTimeline {
    fn time(&mut self, at_ms: u64) -> String {
        let origin = *self.origin_ms.get_or_insert(at_ms);
        format!("{:8.1}", at_ms.saturating_sub(origin) as f64 / 1000.0)
    }

    /// What the demo is doing once `e` happened, when that changes.
    pub fn phase(e: &Event) -> Option<String> {
        let phase = match (e.source, e.key.as_str()) {
            (Source::L1, "l1_ready") => "L1 is up: starting hotmem, which boots the Debian guest",
            (Source::L1, "vmm_start") => "hotmem started: the guest kernel is booting",
            (Source::L2, "ready") => "the guest is up: loading its virtio-mem driver",
            (Source::L1, "resize_request") => "resizing: the guest driver plugs or unplugs blocks",
            (Source::L1, "gcmd") if matches!(e.word(0), Some("fill" | "zerofill")) => {
                return Some(format!(
                    "the guest fills {} MiB of tmpfs (slow under emulation)",
                    e.word(1).unwrap_or("?")
                ));
            }
            (Source::L1, "gcmd") if e.word(0) == Some("drop") => "the guest deletes its files",
            (Source::L1, "gcmd") if e.word(0) == Some("poweroff") => "the guest powers off",
            _ => return None,
        };
        Some(phase.to_string())
    }

    /// The timeline line `e` adds, if any.
    pub fn feed(&mut self, e: &Event) -> Option<String> {
        if e.source == Source::L1 {
            self.origin_ms.get_or_insert(e.at_ms);
        }
        match (e.source, e.key.as_str()) {
            (Source::L2, "memtotal_kib") => {
                let kib: u64 = e.word(0)?.parse().ok()?;
                let time = self.time(e.at_ms);
                Some(format!(
                    "{time}  {:<26} {:>13}M",
                    "guest MemTotal changed",
                    kib / 1024
                ))
            }
            (Source::L1, "resize_request") => {
                let bytes: u64 = e.word(0)?.parse().ok()?;
                let time = self.time(e.at_ms);
                Some(format!(
                    "{time}  {:<26} {:>14} {:>10}",
                    "resize requested",
                    "",
                    gib(bytes)
                ))
            }
            (Source::L2, "filled") => {
                let time = self.time(e.at_ms);
                Some(format!("{time}  {:<26}", "guest filled its files"))
            }
            (Source::L1, "snap") => {
                self.time(e.at_ms);
                self.pending_snap = Some(e.clone());
                None
            }
            (Source::L1, "hotmem_status") => {
                let json = e.rest.split_once(' ').map_or("", |(_, j)| j);
                let sn = self.pending_snap.take()?;
                let s = DeviceStatus::from_hotmem(json).ok()?;
                let row = StatusRow {
                    label: sn.word(0).unwrap_or("?").to_string(),
                    plugged_bytes: s.plugged_bytes,
                    slots_mapped: s.slots_mapped,
                    vmm_rss_kib: sn.field_u64("rss_kib").unwrap_or(0),
                    l1_memfree_kib: sn.field_u64("memfree_kib").unwrap_or(0),
                };
                let time = self.time(sn.at_ms);
                let line = format!(
                    "{time}  {:<26} {:>13}M {:>10} {:>10} {:>6} {:>9}M {:>9}M",
                    format!("status: {}", row.label),
                    sn.field_u64("guest_memtotal_kib").unwrap_or(0) / 1024,
                    gib(s.requested_bytes),
                    gib(s.plugged_bytes),
                    row.slots_mapped.map_or("-".into(), |v| v.to_string()),
                    row.vmm_rss_kib / 1024,
                    row.l1_memfree_kib / 1024,
                );
                self.rows.push(row);
                Some(line)
            }
            _ => None,
        }
    }

    /// "plugged 1→4→1 GiB, slots 1→4→1, host memory returned: …" from the rows so far.
    pub fn summary(&self) -> Result<String, String> {
        let row = |label: &str| {
            self.rows
                .iter()
                .find(|r| r.label == label)
                .ok_or_else(|| format!("no '{label}' status in the run"))
        };
        let (boot, grown, filled, shrunk) = (
            row("boot1-plugged")?,
            row("grown")?,
            row("filled")?,
            row("shrunk")?,
        );
        let slots = |r: &StatusRow| r.slots_mapped.map_or("?".into(), |s| s.to_string());
        let whole_gib = |b: u64| format!("{:.0}", b as f64 / GIB as f64);
        let rss_returned_mib = filled.vmm_rss_kib.saturating_sub(shrunk.vmm_rss_kib) / 1024;
        let l1_returned_mib = shrunk.l1_memfree_kib.saturating_sub(filled.l1_memfree_kib) / 1024;
        Ok(format!(
            "plugged {}→{}→{} GiB, slots {}→{}→{}, host memory returned on the shrink: \
             hotmem RSS {}→{} MiB (−{rss_returned_mib} MiB), L1 free +{l1_returned_mib} MiB",
            whole_gib(boot.plugged_bytes),
            whole_gib(grown.plugged_bytes),
            whole_gib(shrunk.plugged_bytes),
            slots(boot),
            slots(grown),
            slots(shrunk),
            filled.vmm_rss_kib / 1024,
            shrunk.vmm_rss_kib / 1024,
        ))
    }
}

/// Writes timeline lines and, on a terminal, keeps a spinner with the phase on the last line.
#[derive(Clone)]
pub struct Screen {
    inner: Arc<Mutex<ScreenState>>,
    stop: Arc<AtomicBool>,
    tty: bool,
}

struct ScreenState {
    phase: String,
    phase_started: Instant,
}

impl Screen {
    /// Starts the spinner thread (only on a terminal; elsewhere phases are printed as lines).
    pub fn start(phase: &str) -> Self {
        let screen = Screen {
            inner: Arc::new(Mutex::new(ScreenState {
                phase: phase.to_string(),
                phase_started: Instant::now(),
            })),
            stop: Arc::new(AtomicBool::new(false)),
            tty: std::io::stdout().is_terminal(),
        };
        if screen.tty {
            let s = screen.clone();
            std::thread::spawn(move || {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let mut i = 0;
                while !s.stop.load(Ordering::Relaxed) {
                    if let Ok(st) = s.inner.lock() {
                        print!(
                            "\r\x1b[K{} {} ({:.0} s)",
                            frames[i % frames.len()],
                            st.phase,
                            st.phase_started.elapsed().as_secs_f64()
                        );
                        let _ = std::io::stdout().flush();
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(120));
                }
            });
        } else {
            println!("… {phase}");
        }
        screen
    }

    /// A new phase for the spinner (printed as a line when not on a terminal).
    pub fn phase(&self, phase: &str) {
        if let Ok(mut st) = self.inner.lock() {
            if st.phase == phase {
                return;
            }
            st.phase = phase.to_string();
            st.phase_started = Instant::now();
            if !self.tty {
                println!("… {phase}");
            }
        }
    }

    /// Prints one line above the spinner.
    pub fn line(&self, text: &str) {
        if let Ok(_st) = self.inner.lock() {
            if self.tty {
                print!("\r\x1b[K");
            }
            println!("{text}");
        }
    }

    /// Stops the spinner and clears its line.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(_st) = self.inner.lock()
            && self.tty
        {
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::serial::{SerialLine, parse_line};

    fn status(plugged_gib: u64, slots: u64) -> String {
        format!(
            r#"{{"memory_devices":[{{"id":"mem0","requested_bytes":{0},"plugged_bytes":{0},"block_size_bytes":2097152,"region_bytes":68719476736,"slots_mapped":{slots},"mapped_bytes":{0},"legacy_mapping":false}}]}}"#,
            plugged_gib * GIB
        )
    }

    fn events(console: &str) -> Vec<Event> {
        console
            .lines()
            .filter_map(|l| match parse_line(l) {
                SerialLine::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lines_appear_per_event_and_the_summary_reads_the_run() {
        let console = format!(
            "@@HM 1000 l1_ready 6.1 hotmem grow-shrink\n\
             @@HM 5000 snap boot1-plugged memfree_kib=3000000 rss_kib=150000 guest_memtotal_kib=1500000\n\
             @@HM 5100 hotmem_status boot1-plugged {}\n\
             @@HM 6000 resize_request 4294967296\n\
             @@L2 6400 @@HM 99 memtotal_kib 4600000\n\
             @@HM 7000 snap grown memfree_kib=2900000 rss_kib=160000 guest_memtotal_kib=4600000\n\
             @@HM 7100 hotmem_status grown {}\n\
             @@HM 9000 snap filled memfree_kib=2400000 rss_kib=700000 guest_memtotal_kib=4600000\n\
             @@HM 9100 hotmem_status filled {}\n\
             @@HM 12000 snap shrunk memfree_kib=2900000 rss_kib=190000 guest_memtotal_kib=1500000\n\
             @@HM 12100 hotmem_status shrunk {}\n",
            status(1, 1),
            status(4, 4),
            status(4, 4),
            status(1, 1)
        );
        let mut live = LiveTimeline::default();
        let lines: Vec<String> = events(&console)
            .iter()
            .filter_map(|e| live.feed(e))
            .collect();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(
            lines[0].starts_with("     4.0  status: boot1-plugged"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("resize requested") && lines[1].contains("4.00G"));
        assert!(lines[2].contains("4492M"), "{}", lines[2]);
        assert_eq!(
            live.summary().unwrap(),
            "plugged 1→4→1 GiB, slots 1→4→1, host memory returned on the shrink: \
             hotmem RSS 683→185 MiB (−498 MiB), L1 free +488 MiB"
        );
    }

    #[test]
    fn a_summary_without_the_shrink_is_an_error() {
        let mut live = LiveTimeline::default();
        let console = format!(
            "@@HM 5000 snap boot1-plugged memfree_kib=1 rss_kib=1 guest_memtotal_kib=1\n\
             @@HM 5100 hotmem_status boot1-plugged {}\n",
            status(1, 1)
        );
        for e in events(&console) {
            live.feed(&e);
        }
        assert!(live.summary().unwrap_err().contains("grown"));
    }

    #[test]
    fn phases_follow_the_scenario() {
        let e = &events("@@HM 1 gcmd fill 512\n")[0];
        assert_eq!(
            LiveTimeline::phase(e).as_deref(),
            Some("the guest fills 512 MiB of tmpfs (slow under emulation)")
        );
    }
}
