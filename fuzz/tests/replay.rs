//! Every input the fuzzers kept (`corpus/TARGET/`) and every crasher they found (`regressions/TARGET/`),
//! through its target on stable: what the fuzzers learnt stays tested in CI.

use std::path::Path;

#[test]
fn every_corpus_input_and_found_crasher_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    for (name, target) in strata_fuzz::TARGETS {
        let mut files = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).expect("readable");
                target(&data);
                files += 1;
            }
        }
        assert!(
            files > 0,
            "no corpus for {name}: run the fuzzer (fuzz/README.md)"
        );
        total += files;
    }
    eprintln!("{total} inputs replayed");
}
