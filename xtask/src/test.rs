//! `cargo xtask test`: format, lints and the whole test suite.

use std::process::Command;

use clap::Args;

#[derive(Args)]
pub struct TestArgs {
    /// Skip rustfmt and clippy (only run the tests).
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the nested end-to-end scenarios (QEMU, and hotmem once it exists).
    #[arg(long)]
    pub no_e2e: bool,
    /// Skip the short fuzzing stage (each fuzz target for `FUZZ_STAGE_SECONDS`).
    #[arg(long)]
    pub no_fuzz: bool,
    /// Let tests that need /dev/kvm, root or the package registry skip when it is missing
    /// (listed in the summary). Without it such a test fails.
    #[arg(long)]
    pub allow_skips: bool,
}

/// How long `cargo xtask test` runs each fuzz target.
const FUZZ_STAGE_SECONDS: u64 = 30;

/// Runs one command, failing with its description when it does not succeed. The command's
/// standard output goes to our standard error, so `--json` output stays pure JSON.
pub fn run_step(what: &str, command: &mut Command) -> Result<(), String> {
    eprintln!("== {what}");
    let status = command
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn run(args: &TestArgs) -> Result<(), String> {
    if !args.no_lint {
        run_step("rustfmt", cargo().args(["fmt", "--all", "--check"]))?;
        run_step(
            "clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    let skip_log = crate::workspace::root().join("target/test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    // With skips allowed, a machine that cannot install the backend lists those tests as
    // skipped instead of failing here.
    match crate::guest::apt::ensure_test_tools() {
        Err(e) if args.allow_skips => eprintln!("== test tools not installed: {e}"),
        other => other?,
    }
    let mut test = cargo();
    test.args(["test", "--workspace"]);
    // The vhost-frontend tests against a real virtiofsd find it through HOTMEM_VIRTIOFSD;
    // without it they fail (or are listed as skipped with --allow-skips).
    match crate::guest::virtiofsd::ensure(&crate::workspace::root()) {
        Ok(binary) => {
            test.env("HOTMEM_VIRTIOFSD", binary);
        }
        Err(e) if args.allow_skips => eprintln!("== virtiofsd not built: {e}"),
        Err(e) => return Err(e),
    }
    if args.allow_skips {
        test.env(test_support::ALLOW_SKIP_ENV, "1")
            .env(test_support::SKIP_LOG_ENV, &skip_log);
    }
    let tested = run_step("cargo test", &mut test);
    let skipped = std::fs::read_to_string(&skip_log).unwrap_or_default();
    if !skipped.is_empty() {
        eprintln!(
            "== {} test(s) SKIPPED, not passed:\n{skipped}",
            skipped.lines().count()
        );
    }
    tested?;
    run_step(
        "fuzz crate tests",
        cargo()
            .args(["test", "--manifest-path"])
            .arg(crate::fuzz::manifest()),
    )?;
    if !args.no_fuzz {
        crate::fuzz::run(&crate::fuzz::FuzzArgs::all(FUZZ_STAGE_SECONDS))?;
    }
    if !args.no_e2e {
        eprintln!("== e2e (nested QEMU → L1 VMM → L2 Linux)");
        crate::e2e::run(&crate::e2e::E2eArgs::all_vmms())?;
    }
    Ok(())
}
