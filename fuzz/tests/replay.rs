//! Every seed through its target's checks, without libFuzzer: the fallback of
//! scripts/fuzz-smoke.sh when the instrumented build is not available, and a check that every
//! target has seeds and a dictionary.

use std::fs;
use std::path::Path;

use nitro_kv_fuzz::TARGETS;

#[test]
fn every_seed_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, run) in TARGETS {
        let dict = root.join("dicts").join(format!("{name}.dict"));
        assert!(dict.is_file(), "{name}: no dictionary at {}", dict.display());
        let dir = root.join("seeds").join(name);
        let mut seeds: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "{name}: no seeds in {}", dir.display());
        for seed in seeds {
            let bytes = fs::read(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
            eprintln!("{name}: {}", seed.display());
            run(&bytes);
        }
    }
}
