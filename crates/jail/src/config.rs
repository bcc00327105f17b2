//! The jail's command line: where the root goes, who the VMM runs as, limits, and hotmem's own
//! arguments after `--`.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::{Error, error::Result};

/// A user id other than root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uid(pub u32);

/// A group id other than root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gid(pub u32);

/// hotmem-jail: runs hotmem in an empty root, in new mount, PID, IPC, UTS and network
/// namespaces, without capabilities, as an unprivileged user.
#[derive(Debug, Parser)]
#[command(name = "hotmem-jail", version)]
pub struct Cli {
    /// The folder that becomes the VMM's root (created if missing; must be empty).
    #[arg(long)]
    pub jail: PathBuf,
    /// The user the VMM runs as (not 0).
    #[arg(long)]
    pub uid: u32,
    /// The group the VMM runs as (not 0).
    #[arg(long)]
    pub gid: u32,
    /// A cgroup v2 limit for the VMM, e.g. memory.max=8G or pids.max=64 (repeatable).
    #[arg(long = "cgroup", value_name = "KEY=VALUE")]
    pub cgroups: Vec<String>,
    /// An extra host folder the VMM may use, at the same path (e.g. snapshot destinations);
    /// read-only unless it ends in `:rw` (repeatable).
    #[arg(long = "bind", value_name = "PATH[:rw]")]
    pub binds: Vec<String>,
    /// The VMM binary (default: `hotmem` beside this program).
    #[arg(long)]
    pub exec: Option<PathBuf>,
    /// hotmem's arguments.
    #[arg(last = true, required = true)]
    pub vmm_args: Vec<String>,
}

/// An extra folder to bind into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub path: PathBuf,
    pub writable: bool,
}

/// A cgroup v2 interface file and the value to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    pub key: String,
    pub value: String,
}

/// The jail's configuration, validated.
#[derive(Debug, Clone)]
pub struct JailConfig {
    pub root_dir: PathBuf,
    pub uid: Uid,
    pub gid: Gid,
    pub cgroups: Vec<CgroupLimit>,
    pub binds: Vec<Bind>,
    pub exec: PathBuf,
    pub vmm_args: Vec<String>,
}

/// Limits the jail knows how to set (cgroup v2 interface files).
const CGROUP_KEYS: [&str; 6] = [
    "memory.max",
    "memory.high",
    "memory.swap.max",
    "pids.max",
    "cpu.max",
    "cpu.weight",
];

fn absolute(what: &str, path: &Path) -> Result<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {} must be an absolute path (inside the jail the working folder is /)",
            path.display()
        )))
    }
}

impl JailConfig {
    /// Validates the command line; `self_exe` locates the default VMM binary.
    pub fn from_cli(cli: Cli, self_exe: &Path) -> Result<Self> {
        absolute("--jail", &cli.jail)?;
        if cli.uid == 0 || cli.gid == 0 {
            return Err(Error::Config(
                "--uid and --gid must not be 0: the point of the jail is an unprivileged VMM"
                    .into(),
            ));
        }
        let cgroups = cli
            .cgroups
            .iter()
            .map(|c| parse_cgroup(c))
            .collect::<Result<Vec<_>>>()?;
        let binds = cli
            .binds
            .iter()
            .map(|b| parse_bind(b))
            .collect::<Result<Vec<_>>>()?;
        let exec = match cli.exec {
            Some(p) => p,
            None => self_exe.with_file_name("hotmem"),
        };
        absolute("--exec", &exec)?;
        if !exec.is_file() {
            return Err(Error::Path {
                path: exec,
                what: "the VMM binary does not exist (give --exec)".into(),
            });
        }
        Ok(JailConfig {
            root_dir: cli.jail,
            uid: Uid(cli.uid),
            gid: Gid(cli.gid),
            cgroups,
            binds,
            exec,
            vmm_args: cli.vmm_args,
        })
    }
}

fn parse_cgroup(text: &str) -> Result<CgroupLimit> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| Error::Config(format!("--cgroup {text}: expected KEY=VALUE")))?;
    if !CGROUP_KEYS.contains(&key) {
        return Err(Error::Config(format!(
            "--cgroup {key}: unknown limit; known: {}",
            CGROUP_KEYS.join(", ")
        )));
    }
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '.');
    if !ok {
        return Err(Error::Config(format!(
            "--cgroup {key}={value}: the value must be a number, a size like 8G, or `max`"
        )));
    }
    Ok(CgroupLimit {
        key: key.to_string(),
        value: cgroup_value(value),
    })
}

/// cgroup files take bytes: 8G → 8589934592 (other values pass through).
fn cgroup_value(value: &str) -> String {
    let (number, shift) = match value.chars().last() {
        Some('K') => (&value[..value.len() - 1], 10),
        Some('M') => (&value[..value.len() - 1], 20),
        Some('G') => (&value[..value.len() - 1], 30),
        Some('T') => (&value[..value.len() - 1], 40),
        _ => return value.to_string(),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .map_or_else(|| value.to_string(), |b| b.to_string())
}

fn parse_bind(text: &str) -> Result<Bind> {
    let (path, writable) = match text.strip_suffix(":rw") {
        Some(p) => (p, true),
        None => (text.strip_suffix(":ro").unwrap_or(text), false),
    };
    let path = PathBuf::from(path);
    absolute("--bind", &path)?;
    if !path.is_dir() {
        return Err(Error::Path {
            path,
            what: "--bind takes an existing folder".into(),
        });
    }
    Ok(Bind { path, writable })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hotmem-jail").chain(args.iter().copied()))
    }

    /// The configuration of a command line given as one string of space-separated words.
    fn config(line: &str) -> Result<JailConfig> {
        let args: Vec<&str> = line.split_whitespace().collect();
        JailConfig::from_cli(cli(&args).unwrap(), Path::new("/bin/true"))
    }

    #[test]
    fn root_ids_are_refused() {
        let e = config("--jail /tmp/j --uid 0 --gid 5 --exec /bin/true -- x").unwrap_err();
        assert!(e.to_string().contains("must not be 0"), "{e}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let e = config("--jail j --uid 9 --gid 9 --exec /bin/true -- x").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn cgroup_limits_are_checked_and_sizes_become_bytes() {
        let c = config("--jail /tmp/j --uid 9 --gid 9 --exec /bin/true --cgroup memory.max=8G --cgroup pids.max=64 -- x")
        .unwrap();
        assert_eq!(c.cgroups[0].value, "8589934592");
        assert_eq!(c.cgroups[1].value, "64");
        let e =
            config("--jail /tmp/j --uid 9 --gid 9 --exec /bin/true --cgroup devices.allow=a -- x")
                .unwrap_err();
        assert!(e.to_string().contains("unknown limit"), "{e}");
        let e =
            config("--jail /tmp/j --uid 9 --gid 9 --exec /bin/true --cgroup memory.max=1;rm -- x")
                .unwrap_err();
        assert!(e.to_string().contains("value must be"), "{e}");
    }

    #[test]
    fn a_missing_vmm_binary_is_named() {
        let e =
            config("--jail /tmp/j --uid 9 --gid 9 --exec /nonexistent/hotmem -- x").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/hotmem"), "{e}");
    }

    #[test]
    fn binds_are_read_only_unless_marked_rw() {
        assert_eq!(
            parse_bind("/tmp:rw").unwrap(),
            Bind {
                path: "/tmp".into(),
                writable: true
            }
        );
        assert!(!parse_bind("/tmp").unwrap().writable);
        assert!(parse_bind("/nonexistent-folder").is_err());
    }
}
