//! The VMMs the harness can put in L1: QEMU (reference) and hotmem (under test).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::test::run_step;

use super::apt::output;

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

/// How far hotmem is along, as far as the harness can tell from `cargo metadata`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotmemState {
    /// The workspace has no `vmm` package.
    Absent,
    /// The package exists but has not declared itself bootable
    /// (`[package.metadata.hotmem] e2e = true` in crates/vmm/Cargo.toml).
    NotDeclared,
    /// The package says it boots guests: `cargo xtask test` gates on its scenarios.
    Bootable,
}

/// Reads the `vmm` package's state from `cargo metadata`.
pub fn hotmem_state(workspace: &Path) -> HotmemState {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    output(
        "cargo metadata",
        Command::new(cargo).current_dir(workspace).args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
        ]),
    )
    .ok()
    .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    .map_or(HotmemState::Absent, |meta| state_from_metadata(&meta))
}

fn state_from_metadata(metadata: &serde_json::Value) -> HotmemState {
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "vmm"));
    match package {
        None => HotmemState::Absent,
        Some(p) if p["metadata"]["hotmem"]["e2e"] == true => HotmemState::Bootable,
        Some(_) => HotmemState::NotDeclared,
    }
}

/// Builds hotmem and hotmem-ctl as static-pie binaries; returns their paths.
pub fn build_hotmem(workspace: &Path) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    run_step(
        "build hotmem (static-pie)",
        Command::new(cargo)
            .current_dir(workspace)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", workspace.join("target"))
            .args(["build", "--release", "--target", target, "-p", "vmm"]),
    )?;
    let dir = workspace.join("target").join(target).join("release");
    let binaries: Vec<PathBuf> = ["hotmem", "hotmem-ctl"]
        .iter()
        .map(|b| dir.join(b))
        .collect();
    match binaries.iter().find(|b| !b.exists()) {
        Some(missing) => Err(format!("hotmem build left no {}", missing.display())),
        None => Ok(binaries),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotmem_state_follows_the_vmm_package_and_its_declaration() {
        let absent = serde_json::json!({"packages": [{"name": "xtask", "metadata": null}]});
        assert_eq!(state_from_metadata(&absent), HotmemState::Absent);
        let new = serde_json::json!({"packages": [{"name": "vmm", "metadata": null}]});
        assert_eq!(state_from_metadata(&new), HotmemState::NotDeclared);
        let ready = serde_json::json!({"packages": [{"name": "vmm", "metadata": {"hotmem": {"e2e": true}}}]});
        assert_eq!(state_from_metadata(&ready), HotmemState::Bootable);
    }
}
