//! Kernel modules: load order from `modules.dep`, and copying them (decompressed) into an
//! initramfs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The compressions Debian has used for module files, longest suffix first.
const MODULE_SUFFIXES: [&str; 4] = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// A module's canonical name: file name without suffix, `-` written as `_`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = MODULE_SUFFIXES
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    stem.replace('-', "_")
}

/// One module from `modules.dep`: its path under /lib/modules/VERSION and its direct deps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    pub relative_path: String,
    pub deps: Vec<String>,
}

/// The parsed `modules.dep` of one kernel plus its built-in module names.
#[derive(Debug, Default)]
pub struct ModuleDeps {
    modules: HashMap<String, ModuleEntry>,
    builtin: Vec<String>,
}

impl ModuleDeps {
    /// Parses `modules.dep` ("path: dep-path dep-path ...") and `modules.builtin` (one path per
    /// line).
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let modules = modules_dep
            .lines()
            .filter_map(|line| {
                let (path, deps) = line.split_once(':')?;
                let path = path.trim();
                let entry = ModuleEntry {
                    relative_path: path.to_string(),
                    deps: deps.split_whitespace().map(module_name).collect(),
                };
                Some((module_name(path), entry))
            })
            .collect();
        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        ModuleDeps { modules, builtin }
    }

    /// The modules to insert, dependencies first, so that `wanted` all load. Built-in modules
    /// are left out; an unknown module is an error.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<ModuleEntry>, String> {
        let mut order = Vec::new();
        let mut state: HashMap<String, bool> = HashMap::new(); // false: visiting, true: done
        for name in wanted {
            self.visit(&module_name(name), &mut state, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        state: &mut HashMap<String, bool>,
        order: &mut Vec<ModuleEntry>,
    ) -> Result<(), String> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => return Err(format!("module dependency cycle through {name}")),
            None => {}
        }
        let Some(entry) = self.modules.get(name) else {
            if self.builtin.iter().any(|b| b == name) {
                state.insert(name.to_string(), true);
                return Ok(());
            }
            return Err(format!(
                "module {name} is neither in modules.dep nor built in"
            ));
        };
        state.insert(name.to_string(), false);
        for dep in &entry.deps {
            self.visit(dep, state, order)?;
        }
        state.insert(name.to_string(), true);
        order.push(entry.clone());
        Ok(())
    }
}

/// Copies the modules `wanted` need from `modules_root` (/lib/modules/VERSION of an
/// extracted kernel) into `dest` as plain `NAME.ko` files, decompressing on the host; returns
/// the names in load order.
pub fn install_modules(
    modules_root: &Path,
    wanted: &[&str],
    dest: &Path,
) -> Result<Vec<String>, String> {
    let read = |name: &str| {
        std::fs::read_to_string(modules_root.join(name)).map_err(|e| format!("{name}: {e}"))
    };
    let deps = ModuleDeps::parse(
        &read("modules.dep")?,
        &read("modules.builtin").unwrap_or_default(),
    );
    std::fs::create_dir_all(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let mut names = Vec::new();
    for entry in deps.load_order(wanted)? {
        let source = modules_root.join(&entry.relative_path);
        let name = module_name(&entry.relative_path);
        let target = dest.join(format!("{name}.ko"));
        write_decompressed(&source, &target)?;
        names.push(name);
    }
    Ok(names)
}

fn write_decompressed(source: &Path, target: &Path) -> Result<(), String> {
    let text = source.to_string_lossy();
    let tool = if text.ends_with(".xz") {
        Some("xz")
    } else if text.ends_with(".zst") {
        Some("zstd")
    } else if text.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => std::fs::copy(source, target)
            .map(drop)
            .map_err(|e| format!("copying {text}: {e}")),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(source)
                .output()
                .map_err(|e| format!("{tool}: {e}"))?;
            if !out.status.success() {
                return Err(format!("{tool} -dc {text} failed"));
            }
            std::fs::write(target, out.stdout).map_err(|e| format!("{}: {e}", target.display()))
        }
    }
}

/// The directory /lib/modules/VERSION inside an extracted kernel package, with its
/// `modules.dep` (Debian generates it at install time, so run depmod on the extracted tree).
pub fn modules_root(extracted: &Path) -> Result<(PathBuf, String), String> {
    let base = extracted.join("lib/modules");
    let entry = std::fs::read_dir(&base)
        .map_err(|e| format!("{}: {e}", base.display()))?
        .filter_map(Result::ok)
        .find(|e| e.path().join("modules.order").exists())
        .ok_or_else(|| format!("no modules.order under {}", base.display()))?;
    let version = entry.file_name().to_string_lossy().into_owned();
    if !entry.path().join("modules.dep").exists() {
        crate::test::run_step(
            &format!("depmod {version}"),
            Command::new("depmod")
                .arg("-b")
                .arg(extracted)
                .arg(&version),
        )?;
    }
    Ok((entry.path(), version))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP_6_1: &str = "\
kernel/drivers/virtio/virtio_mem.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/arch/x86/kvm/kvm-amd.ko.xz: kernel/arch/x86/kvm/kvm.ko.xz kernel/drivers/crypto/ccp/ccp.ko.xz
kernel/arch/x86/kvm/kvm.ko.xz: kernel/virt/lib/irqbypass.ko.xz
kernel/drivers/crypto/ccp/ccp.ko.xz:
kernel/virt/lib/irqbypass.ko.xz:
";

    fn names(order: &[ModuleEntry]) -> Vec<String> {
        order
            .iter()
            .map(|e| module_name(&e.relative_path))
            .collect()
    }

    fn position(order: &[String], name: &str) -> usize {
        order.iter().position(|n| n == name).unwrap()
    }

    #[test]
    fn load_order_puts_every_dependency_first_and_once() {
        let deps = ModuleDeps::parse(DEP_6_1, "");
        let order = names(&deps.load_order(&["virtio_pci", "virtio_mem"]).unwrap());
        assert_eq!(order.len(), 6);
        assert!(position(&order, "virtio_ring") < position(&order, "virtio"));
        assert!(position(&order, "virtio") < position(&order, "virtio_pci"));
        assert!(position(&order, "virtio_pci_modern_dev") < position(&order, "virtio_pci"));
        assert_eq!(order.last().map(String::as_str), Some("virtio_mem"));
    }

    #[test]
    fn dashed_and_compressed_names_resolve() {
        let deps = ModuleDeps::parse(DEP_6_1, "");
        let order = names(&deps.load_order(&["kvm-amd"]).unwrap());
        assert_eq!(order, ["irqbypass", "kvm", "ccp", "kvm_amd"]);
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_fail() {
        let deps = ModuleDeps::parse(DEP_6_1, "kernel/drivers/virtio/virtio_input.ko\n");
        assert!(deps.load_order(&["virtio_input"]).unwrap().is_empty());
        assert!(deps.load_order(&["no_such_module"]).is_err());
    }

    #[test]
    fn dependency_cycles_are_reported() {
        let deps = ModuleDeps::parse("a.ko: b.ko\nb.ko: a.ko\n", "");
        assert!(deps.load_order(&["a"]).unwrap_err().contains("cycle"));
    }

    #[test]
    fn module_name_strips_suffixes_and_dashes() {
        assert_eq!(module_name("kernel/x/kvm-amd.ko.zst"), "kvm_amd");
        assert_eq!(module_name("virtio_mem.ko"), "virtio_mem");
        assert_eq!(module_name("virtio_mem"), "virtio_mem");
    }
}
