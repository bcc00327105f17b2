//! The VMMs the harness can put in L1: QEMU (reference) and hotmem (under test).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::test::run_step;

/// A VMM the end-to-end scenarios run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    Hotmem,
    Qemu,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Hotmem => "hotmem",
            Vmm::Qemu => "qemu",
        }
    }
}

/// Builds hotmem, hotmem-ctl, hotmem-jail and xtask as static-pie binaries; returns their paths.
pub fn build_hotmem(workspace: &Path) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    run_step(
        "build hotmem (static-pie)",
        Command::new(cargo)
            .current_dir(workspace)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", workspace.join("target"))
            .args([
                "build",
                "--release",
                "--target",
                target,
                "-p",
                "vmm",
                "-p",
                "jail",
                "-p",
                "xtask",
            ]),
    )?;
    let dir = workspace.join("target").join(target).join("release");
    // xtask runs the benchmarks inside L1 (`cargo xtask bench … --nested`).
    let binaries: Vec<PathBuf> = ["hotmem", "hotmem-ctl", "hotmem-jail", "xtask"]
        .iter()
        .map(|b| dir.join(b))
        .collect();
    match binaries.iter().find(|b| !b.exists()) {
        Some(missing) => Err(format!("hotmem build left no {}", missing.display())),
        None => Ok(binaries),
    }
}
