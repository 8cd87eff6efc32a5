//! Promises kept in prose and layout: every exported metric and every flag is documented, and
//! the model reads neither the clock nor the kernel nor the other stages.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Metric names (as sample names: counters with `_total`) in a Prometheus text exposition.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn every_exported_metric_is_in_the_catalogue() {
    let catalogue = read("docs/metrics.md");
    let names = metric_names(&read("tests/golden/drain.prom"));
    assert!(
        names.len() >= 25,
        "the golden file lists {} metrics",
        names.len()
    );
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !catalogue.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
}

#[test]
fn every_flag_is_documented() {
    let help = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let docs = read("README.md") + &read("docs/configuration.md");
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .collect();
    assert!(flags.len() >= 6, "{flags:?}");
    for flag in flags {
        assert!(
            docs.contains(&format!("`{flag}")),
            "{flag} is not documented"
        );
    }
}

#[test]
fn the_model_reads_no_clock_no_kernel_and_no_other_stage() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/model");
    let forbidden = [
        "crate::source",
        "crate::exposition",
        "crate::app",
        "Instant",
        "SystemTime",
        "std::fs",
        "std::net::Tcp",
        "libc",
        "netlink",
        "procfs",
        "unsafe",
    ];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} mentions {word}: the model must stay pure",
                path.display()
            );
        }
    }
}

#[test]
fn the_example_configuration_file_is_valid() {
    let doc = read("docs/configuration.md");
    let file = doc.split("## File").nth(1).expect("a File section");
    let toml = file
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block in the File section");
    let path = std::env::temp_dir().join(format!("drainwatch-doc-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "docs/configuration.md's example: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
