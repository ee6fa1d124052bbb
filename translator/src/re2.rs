//! Route regexes judged as Envoy judges them: compiled by Google RE2, the
//! library Envoy uses, and held to Envoy's limit on RE2's program size.
//!
//! Envoy rejects a regex that RE2 cannot compile, and one whose compiled
//! program is larger than the runtime value `re2.max_program_size.error_level`
//! (default [`ENVOY_MAX_PROGRAM_SIZE`]); either rejects the whole
//! RouteConfiguration, so every route on the port. Another engine's parser
//! (Rust's, say) accepts syntax RE2 lacks and has no such limit, so the check
//! runs RE2 itself, through a small C++ shim (`re2/shim.cc`) over the system
//! library. `translator/tests/re2_envoy.rs` holds this module's verdicts and
//! program sizes to the pinned Envoy's.

use std::borrow::Cow;
use std::ffi::{CStr, c_char, c_long};

/// Envoy's default `re2.max_program_size.error_level`: a regex whose RE2
/// program is larger makes Envoy reject the configuration. Gatewright sets
/// no runtime override, so this is the limit its Envoys apply.
pub const ENVOY_MAX_PROGRAM_SIZE: usize = 100;

unsafe extern "C" {
    fn gatewright_re2_program_size(
        pattern: *const c_char,
        len: usize,
        error: *mut c_char,
        error_cap: usize,
    ) -> c_long;
}

/// Checks `pattern` as Envoy checks a `safe_regex`: non-empty (Envoy's
/// schema), compiled by RE2, and a program no larger than
/// [`ENVOY_MAX_PROGRAM_SIZE`]. Returns the program size.
pub fn check(pattern: &str) -> Result<usize, String> {
    if pattern.is_empty() {
        return Err("an empty regular expression".to_owned());
    }
    let size = program_size(pattern)?;
    if size > ENVOY_MAX_PROGRAM_SIZE {
        return Err(format!(
            "RE2 program size {size} exceeds Envoy's limit of {ENVOY_MAX_PROGRAM_SIZE}"
        ));
    }
    Ok(size)
}

/// The size of the RE2 program for `pattern`, compiled with the options
/// Envoy uses, or RE2's error message.
pub fn program_size(pattern: &str) -> Result<usize, String> {
    let pattern = p_spelled_named_groups(pattern);
    let mut error = [0 as c_char; 256];
    // SAFETY: the shim reads exactly `len` bytes of `pattern`, writes at
    // most `error.len()` bytes (NUL-terminated) into `error`, keeps neither
    // pointer, and catches every C++ exception.
    let size = unsafe {
        gatewright_re2_program_size(
            pattern.as_ptr().cast(),
            pattern.len(),
            error.as_mut_ptr(),
            error.len(),
        )
    };
    match usize::try_from(size) {
        Ok(size) => Ok(size),
        Err(_) => {
            // SAFETY: the shim NUL-terminates `error` on failure, and the
            // buffer started zeroed, so there is a NUL within it either way.
            let message = unsafe { CStr::from_ptr(error.as_ptr()) };
            Err(message.to_string_lossy().into_owned())
        }
    }
}

/// Rewrites each named group `(?<name>` to `(?P<name>`.
///
/// RE2 releases from mid-2023 on (the pinned Envoy's among them) read
/// `(?<name>re)` exactly as `(?P<name>re)`; older ones, such as Debian 12's,
/// reject it. Spelling it the old way gives the newer verdict and program
/// size from either library. Only real group openings are rewritten: not
/// escaped parentheses, nor text in a character class or in `\Q...\E`, nor
/// lookbehinds `(?<=` and `(?<!`, which every RE2 rejects.
fn p_spelled_named_groups(pattern: &str) -> Cow<'_, str> {
    let b = pattern.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if b.get(i + 1) == Some(&b'Q') => {
                i = find(b, i + 2, b"\\E").map_or(b.len(), |end| end + 2);
            }
            b'\\' => i += 2,
            b'[' => i = class_end(b, i),
            b'(' if b[i + 1..].starts_with(b"?<") && !matches!(b.get(i + 3), Some(b'=' | b'!')) => {
                // `(?` is ASCII, so i + 2 is a char boundary.
                out.push_str(&pattern[copied..i + 2]);
                out.push('P');
                copied = i + 2;
                i += 3;
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        Cow::Borrowed(pattern)
    } else {
        out.push_str(&pattern[copied..]);
        Cow::Owned(out)
    }
}

/// The index just past the character class opening at `b[start]` (a `[`),
/// as RE2 delimits it: a `]` right after `[` or `[^` is a member, `\`
/// escapes the next byte, and `[:name:]` is one member. The end of the
/// pattern if the class is not closed (RE2 then rejects the pattern anyway).
fn class_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    if b.get(i) == Some(&b'^') {
        i += 1;
    }
    if b.get(i) == Some(&b']') {
        i += 1;
    }
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b']' => return i + 1,
            b'[' if b.get(i + 1) == Some(&b':') => {
                i = find(b, i + 2, b":]").map_or(i + 1, |end| end + 2);
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// The index of the first `needle` in `b` at or after `from`.
fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| from + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_sizes_are_re2s() {
        // Sizes as the pinned Envoy reports them (tests/re2_envoy.rs checks
        // the same and more against Envoy itself).
        assert_eq!(program_size("/v[0-9]+/.*"), Ok(11));
        assert_eq!(program_size("[a-z]{96}"), Ok(100));
        assert_eq!(program_size("[a-z]{97}"), Ok(101));
        assert_eq!(program_size("(a|b|c){30}"), Ok(94));
    }

    #[test]
    fn the_limit_is_envoys() {
        assert_eq!(check("[a-z]{96}"), Ok(100));
        assert_eq!(
            check("[a-z]{97}"),
            Err("RE2 program size 101 exceeds Envoy's limit of 100".to_owned())
        );
        assert!(check("").is_err());
    }

    #[test]
    fn syntax_rust_accepts_but_re2_rejects() {
        // Accepted by Rust's regex-syntax, rejected by RE2 (and by Envoy).
        for (pattern, error) in [
            ("(?x) a b", "invalid perl operator: (?x"),
            ("caf\\u00e9", "invalid escape sequence: \\u"),
            ("a{1001}", "invalid repetition size: {1001}"),
            ("(?R)a", "invalid perl operator: (?R"),
            ("\\Z", "invalid escape sequence: \\Z"),
        ] {
            assert_eq!(program_size(pattern), Err(error.to_owned()), "{pattern}");
        }
        // Envoy's RE2 runs in Latin-1: code points above U+00FF are errors.
        assert!(program_size("\\x{100}").is_err());
        assert_eq!(program_size("\\x{ff}"), Ok(5));
    }

    #[test]
    fn a_nul_byte_is_part_of_the_pattern() {
        // The shim gets a length, not a C string: "a\0b" is three literals,
        // one instruction more than "ab".
        let ab = program_size("ab").expect("ab compiles");
        assert_eq!(program_size("a\0b"), Ok(ab + 1));
    }

    #[test]
    fn named_groups_in_either_spelling() {
        assert_eq!(p_spelled_named_groups("(?<id>[0-9]+)"), "(?P<id>[0-9]+)");
        assert_eq!(
            p_spelled_named_groups("(?<a>x)|(?<b>y)"),
            "(?P<a>x)|(?P<b>y)"
        );
        assert_eq!(
            program_size("(?<id>[0-9]+)"),
            program_size("(?P<id>[0-9]+)")
        );
        assert_eq!(program_size("(?<id>[0-9]+)"), Ok(8));
        // Not group openings: left alone.
        for pattern in [
            "\\(?<a>)",
            "[(?<a>)]",
            "[](?<a>)]",
            "[^](?<a>)]",
            "[[:alpha:](?<a>)]",
            "\\Q(?<a>\\E",
            "(?<=a)b",
            "(?<!a)b",
            "(?P<a>x)",
        ] {
            assert_eq!(p_spelled_named_groups(pattern), pattern, "{pattern}");
        }
        // After a class or a quote ends, openings count again.
        assert_eq!(p_spelled_named_groups("[a](?<b>c)"), "[a](?P<b>c)");
        assert_eq!(p_spelled_named_groups("\\Qx\\E(?<b>c)"), "\\Qx\\E(?P<b>c)");
        // Lookbehinds stay errors.
        assert!(program_size("(?<=a)b").is_err());
    }
}
