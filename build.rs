//! Records the git commit in `DRAINWATCH_REVISION` for `drainwatch_build_info{revision}`, unless
//! the environment already sets it (packaging builds from a tarball set it themselves).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DRAINWATCH_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    if std::env::var_os("DRAINWATCH_REVISION").is_some() {
        return;
    }
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(revision) = revision {
        println!("cargo:rustc-env=DRAINWATCH_REVISION={revision}");
    }
}
