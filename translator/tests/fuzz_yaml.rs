//! Fuzzing the whole path from YAML text to Envoy: the golden cases
//! (`testdata/translator/*.yaml`) are the corpus; each case mutates one of
//! them as text (lines deleted, duplicated, swapped; values replaced by
//! hostile scalars; garbage inserted; the file cut short), parses what is
//! left as the file provider does (a document that does not parse or does
//! not decode is skipped), translates it, and loads every Gateway's output
//! into the real Envoy. The properties: nothing panics, and Envoy accepts
//! every output.
//!
//! `PROPTEST_CASES` sets the number of cases (default 16, so `make test`
//! stays quick); `make fuzz` runs many more. Failing cases are kept in
//! `tests/proptest-regressions/fuzz_yaml.txt` and replayed first.

mod support;

use gatewright_translator::{Input, translate};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde::Deserialize as _;
use std::sync::OnceLock;

/// The corpus: every golden case's text.
fn corpus() -> &'static [String] {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut paths: Vec<_> = std::fs::read_dir(support::cases_dir())
            .expect("the golden cases directory")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("a golden case"))
            .collect()
    })
}

/// Scalars that have broken parsers before: empty, huge, negative, wrong
/// types, control characters, wildcards, and very long text.
const HOSTILE: &[&str] = &[
    "''",
    "-1",
    "0",
    "65536",
    "99999999999999999999",
    "null",
    "[]",
    "{}",
    "'*'",
    "'/'",
    "'//'",
    "'..'",
    "'%2F'",
    "'\\u0000'",
    "\"\\t\\r\\n\"",
    "true",
    "1.5",
    "'a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z'",
    "'(a|b|c|d|e)*{2,5}['",
];

#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Replace the value after the first `:` of a line.
    ReplaceValue(usize, String),
    InsertGarbage(usize, String),
    /// Keep this many thousandths of the text.
    Truncate(u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<usize>();
    prop_oneof![
        3 => line.prop_map(Mutation::DeleteLine),
        2 => line.prop_map(Mutation::DuplicateLine),
        2 => (line, line).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        6 => (line, prop_oneof![
            proptest::sample::select(HOSTILE).prop_map(str::to_owned),
            "[ -~]{0,40}",
            "x{200,2000}",
        ])
            .prop_map(|(l, v)| Mutation::ReplaceValue(l, v)),
        1 => (line, "\\PC{0,40}").prop_map(|(l, g)| Mutation::InsertGarbage(l, g)),
        1 => (0u16..1000).prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for m in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match m {
            Mutation::DeleteLine(i) => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
            Mutation::ReplaceValue(i, value) => {
                // Only lines with a value; comment lines are left alone.
                if let Some((key, _)) = lines[i % n].split_once(": ") {
                    lines[i % n] = format!("{key}: {value}");
                }
            }
            Mutation::InsertGarbage(i, garbage) => lines.insert(i % n, garbage.clone()),
            Mutation::Truncate(keep) => {
                let keep = n * usize::from(*keep) / 1000;
                lines.truncate(keep.max(1));
            }
        }
    }
    lines.join("\n")
}

/// Parses `text` as the file provider does: documents that do not parse or
/// decode are skipped, the rest are translated.
fn input_of(text: &str) -> Input {
    let mut input = Input::new();
    input.now = Some(support::case_now());
    for document in serde_yaml::Deserializer::from_str(text) {
        let Ok(yaml) = serde_yaml::Value::deserialize(document) else {
            // The rest of the stream cannot be trusted after a syntax
            // error; the provider reports it and moves to the next file.
            break;
        };
        if yaml.is_null() {
            continue;
        }
        let Ok(json) = serde_json::to_value(&yaml) else {
            continue;
        };
        let _ = input.add_document(json);
    }
    input
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/fuzz_yaml.txt"
        )))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_cases_translate_without_panic_and_envoy_accepts_the_output(
        case in any::<proptest::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let corpus = corpus();
        let text = mutate(&corpus[case.index(corpus.len())], &mutations);
        let output = translate(&input_of(&text));
        if let Err(e) = support::envoy_validate(&output) {
            return Err(TestCaseError::fail(format!(
                "Envoy rejected the output of:\n{text}\n---\n{e}"
            )));
        }
    }
}
