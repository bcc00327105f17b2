//! The table of threads and their lists in docs/HARDENING.md, generated from the lists so the
//! documentation cannot drift (a test compares them).

use crate::{Arg, ThreadKind, allow_list, refused};

/// Where each kind is started (for the table).
fn started_in(kind: ThreadKind) -> &'static str {
    match kind {
        ThreadKind::Vmm => "main thread, once the VM is set up (vm.rs)",
        ThreadKind::Vcpu => "`vcpu{N}`, machine.rs, from the VM thread at every start/resume",
        ThreadKind::ApiListener => "`api`, operator.rs",
        ThreadKind::ApiConnection => "`api-conn`, api server.rs, from the listener",
        ThreadKind::Monitor => "`monitor`, monitor.rs",
        ThreadKind::Console => "`console-in`, console.rs",
        ThreadKind::ExitWatch => "`exit-watch`, control.rs, from the VM thread at every boot",
        ThreadKind::QueueNotify => "`queue-notify`, notify.rs",
        ThreadKind::VhostEvents => "`vhost-events`, vhost_user.rs",
        ThreadKind::VhostCallRelay => "`vhost-call-ID`, vhost-frontend device.rs",
        ThreadKind::Migration => "reserved for the migration thread (from the VM thread)",
    }
}

/// The markdown table: one row per kind, its calls (its children's included) and the
/// argument rules.
pub fn thread_table() -> String {
    let mut out = String::from(
        "| Thread kind | Started | Calls allowed (with its children's) | Argument rules |\n\
         |---|---|---|---|\n",
    );
    for kind in ThreadKind::ALL {
        let list = allow_list(kind);
        let mut plain = Vec::new();
        let mut rules = Vec::new();
        for a in list.0.values() {
            plain.push(a.name);
            if a.arg != Arg::Any {
                rules.push(format!("`{}`: {}", a.name, a.arg.describe()));
            }
        }
        let quiet: Vec<String> = refused(kind)
            .iter()
            .map(|(_, n)| format!("`{n}`"))
            .collect();
        if !quiet.is_empty() {
            rules.push(format!("{}: refused with EACCES", quiet.join(", ")));
        }
        plain.sort_unstable();
        let children: Vec<&str> = kind.children().iter().map(|c| c.name()).collect();
        let name = if children.is_empty() {
            format!("`{}`", kind.name())
        } else {
            format!("`{}` (starts {})", kind.name(), children.join(", "))
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            started_in(kind),
            plain.join(", "),
            rules.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_doc_lists_every_thread_kind_with_its_current_list() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/HARDENING.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let table = thread_table();
        assert!(
            doc.contains(&table),
            "docs/HARDENING.md's thread table is out of date; it should read:\n{table}"
        );
        for kind in ThreadKind::ALL {
            assert!(doc.contains(&format!("`{}`", kind.name())), "{kind}");
        }
    }
}
