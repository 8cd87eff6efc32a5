//! Every input that ever crashed a fuzz target (`scripts/fuzz.sh`), replayed through the same
//! target in every test run: `tests/fixtures/fuzz/<target>/<name>`. The targets panic on a
//! panic of the code under test and on broken invariants (see `drainwatch::fuzz`).

use std::path::Path;

use drainwatch::fuzz::{target, TARGETS};

#[test]
fn every_input_that_crashed_a_target_now_passes_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut replayed = 0;
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let run = target(&name)
            .unwrap_or_else(|| panic!("{}: no fuzz target called {name}", dir.display()));
        for input in std::fs::read_dir(&dir).unwrap() {
            let input = input.unwrap().path();
            let bytes = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{} crashes again", input.display());
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no regression inputs under {}",
        root.display()
    );
}

#[test]
fn every_target_has_a_libfuzzer_wrapper() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        let wrapper = std::fs::read_to_string(root.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(wrapper.contains(&format!("drainwatch::fuzz::{name}(data)")));
    }
    let wrappers = std::fs::read_dir(&root).unwrap().count();
    assert_eq!(
        wrappers,
        TARGETS.len(),
        "a wrapper without a target in TARGETS"
    );
}
