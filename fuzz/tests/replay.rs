//! Replays the committed inputs through the same harnesses the fuzzers run, natively
//! (stable toolchain, no libFuzzer): `cargo test --release --manifest-path fuzz/Cargo.toml`.
//! `seeds/` must pass; `regressions/` holds inputs that once failed and must pass
//! once the bug they found is fixed.

use std::panic::{catch_unwind, AssertUnwindSafe};

use lookergate_fuzz::{files, fuzz_dir, TARGETS};

fn replay(kind: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, target) in TARGETS {
        for file in files(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&file).unwrap_or_default();
            count += 1;
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(format!("{name}: {}", file.display()));
            }
        }
    }
    eprintln!("{kind}: replayed {count} inputs, {} failed", failures.len());
    failures
}

#[test]
fn seeds_pass_every_harness() {
    let failures = replay("seeds");
    assert!(failures.is_empty(), "seed inputs fail their harness:\n{}", failures.join("\n"));
}

#[test]
fn regressions_stay_fixed() {
    let failures = replay("regressions");
    assert!(failures.is_empty(), "regression inputs still fail (see docs/FUZZING.md):\n{}", failures.join("\n"));
}

/// The seed tokens reach both sides of the verifier: several verify, and several are
/// refused for each of a few reasons (else the corpus no longer matches the fixtures).
#[test]
fn seed_tokens_reach_accept_and_refuse() {
    use lookergate_fuzz::{verifier, NOW};
    let verifier = verifier();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for file in files(&fuzz_dir().join("seeds/jwt_verify")) {
        let token = std::fs::read_to_string(&file).unwrap_or_default();
        let code = match verifier.verify(&token, NOW) {
            Ok(v) => format!("ok:{}", v.alg),
            Err(e) => e.code().to_owned(),
        };
        *codes.entry(code).or_default() += 1;
    }
    eprintln!("{codes:?}");
    let accepted: usize = codes.iter().filter(|(c, _)| c.starts_with("ok:")).map(|(_, n)| n).sum();
    assert!(accepted >= 10, "{codes:?}");
    for reason in ["token_expired", "wrong_issuer", "alg_not_allowed", "bad_signature", "crit_unsupported"] {
        assert!(codes.contains_key(reason), "no seed refused with {reason}: {codes:?}");
    }
}
