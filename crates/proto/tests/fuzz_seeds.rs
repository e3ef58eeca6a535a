//! The fuzz targets of `fuzz/` run on stable, inside `cargo test`: every committed seed
//! (`fuzz/seeds/<target>/`), then a fixed number of deterministic mutations of them (byte
//! flips, inserts, deletes, splices of two seeds). libFuzzer explores further when cargo-fuzz
//! is installed (`tests/run` runs it then); this replay keeps every target's invariants
//! checked on any machine, with no nightly toolchain or extra tool to install.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

#[path = "../fuzz/targets/capability_filter.rs"]
mod capability_filter;
#[path = "../fuzz/targets/forward_reply.rs"]
mod forward_reply;
#[path = "../fuzz/targets/greeting.rs"]
mod greeting;
#[path = "../fuzz/targets/imap_state.rs"]
mod imap_state;
#[path = "../fuzz/targets/lex.rs"]
mod lex;
#[path = "../fuzz/targets/login_guard.rs"]
mod login_guard;
#[path = "../fuzz/targets/login_name.rs"]
mod login_name;
#[path = "../fuzz/targets/plain_phase.rs"]
mod plain_phase;
#[path = "../fuzz/targets/prelogin.rs"]
mod prelogin;

/// A cargo-fuzz target's name and its body.
type Target = (&'static str, fn(&[u8]));

/// Every target.
const TARGETS: &[Target] = &[
    ("capability_filter", capability_filter::fuzz_one),
    ("forward_reply", forward_reply::fuzz_one),
    ("greeting", greeting::fuzz_one),
    ("imap_state", imap_state::fuzz_one),
    ("lex", lex::fuzz_one),
    ("login_guard", login_guard::fuzz_one),
    ("login_name", login_name::fuzz_one),
    ("plain_phase", plain_phase::fuzz_one),
    ("prelogin", prelogin::fuzz_one),
];

/// Mutated inputs per target: a second or two for all of them in a debug build.
const MUTATIONS: usize = 5000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; every fuzz target needs seeds", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "{}: no seed files", dir.display());
    seeds
}

/// xorshift64*: deterministic, so a failure here fails again the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(5) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 => input.insert(at, rng.next() as u8),
            // Bytes the parsers care about, more often than chance would pick them.
            2 => {
                let special = b"\r\n{}+-\"\\ 0123456789*ABDILNOTX";
                input.insert(at, special[rng.below(special.len())]);
            }
            3 if at < input.len() => {
                input.remove(at);
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from + 1);
                input.splice(at..at, other[from..from + len].iter().copied());
            }
        }
    }
    input
}

#[test]
fn every_fuzz_target_holds_on_its_seeds_and_their_mutations() {
    for (name, run) in TARGETS {
        let seeds = seeds(name);
        for seed in &seeds {
            run(seed);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for _ in 0..MUTATIONS {
            run(&mutate(&mut rng, &seeds));
        }
    }
}

/// A new cargo-fuzz target must be added to [`TARGETS`] (and get seeds).
#[test]
fn every_fuzz_target_is_replayed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".rs").unwrap().to_owned()
        })
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(on_disk, listed, "crates/proto/tests/fuzz_seeds.rs TARGETS");
}
