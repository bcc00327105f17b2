//! `hotmem` refuses bad NUMA combinations before creating anything: exit status 2 and a message
//! naming the mistake.

use std::process::Command;

fn hotmem(args: &[&str]) -> (Option<i32>, String) {
    let kernel = std::env::current_exe().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hotmem"))
        .args(["--kernel", kernel.to_str().unwrap(), "--cpus", "2"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_numa_combinations_exit_with_status_2_and_say_why() {
    let two = [
        "--numa",
        "node=0,cpus=0,memory=512M",
        "--numa",
        "node=1,cpus=1,memory=512M",
    ];
    for (extra, says) in [
        (
            &["--mem-device", "id=m,size=64G,node=3"][..],
            "node 3 does not exist",
        ),
        (
            &["--memory", "768M"][..],
            "adds up to 1G, but --memory is 768M",
        ),
        (
            &["--numa", "node=1,cpus=1,memory=128M"][..],
            "node 1 is given twice",
        ),
        (
            &["--numa", "node=2,cpus=1"][..],
            "vCPU 1 is on node 1 and node 2",
        ),
    ] {
        let mut args = two.to_vec();
        args.extend_from_slice(extra);
        let (code, stderr) = hotmem(&args);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
    let (code, stderr) = hotmem(&[
        "--numa",
        "node=0,cpus=0,memory=512M,distances=1:21",
        "--numa",
        "node=1,cpus=1,memory=512M,distances=0:25",
    ]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not symmetric"), "{stderr}");
}
