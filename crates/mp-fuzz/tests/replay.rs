//! Replays every input of `fuzz/corpus/<target>` and `fuzz/regressions/<target>` through its
//! target on the stable toolchain: CI checks what the fuzzer found without running it. Also
//! checks that the inputs, all of them, leave no descriptor open.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn every_corpus_and_regression_input_gives_a_value_or_an_error_and_leaks_nothing() {
    let before = open_descriptors();
    for target in mp_fuzz::TARGETS {
        let files = inputs(target.name);
        assert!(!files.is_empty(), "no corpus for {}", target.name);
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let before = open_descriptors();
            (target.run)(&data);
            assert_eq!(
                open_descriptors(),
                before,
                "{} left descriptors open",
                file.display()
            );
        }
    }
    // (The test's other threads open nothing: this is the only test of the binary.)
    assert_eq!(open_descriptors(), before, "descriptors left open");
}
