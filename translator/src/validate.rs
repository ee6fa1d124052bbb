//! Checks on values that reach Envoy. The CRD schemas enforce most of these
//! in a cluster, but nothing does for objects read from files, and a value
//! Envoy rejects would make it refuse the whole update.

/// A Gateway API hostname: lowercase RFC 1123 labels, optionally behind a
/// leading `*.`.
pub(crate) fn hostname(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && h.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("invalid hostname {h:?}"))
    }
}

/// An HTTP header name (an RFC 7230 token).
pub(crate) fn header_name(n: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !n.is_empty() && n.len() <= 256 && n.bytes().all(token) {
        Ok(())
    } else {
        Err(format!("invalid header name {n:?}"))
    }
}

/// A header a filter may set, add or remove: a valid name that is not
/// `host` (rewritten by its own filter) or a pseudo-header.
pub(crate) fn modifiable_header(n: &str) -> Result<(), String> {
    header_name(n)?;
    if n.eq_ignore_ascii_case("host") {
        return Err("the Host header cannot be modified by a header filter".into());
    }
    Ok(())
}

/// An HTTP header value: no NUL, CR or LF.
pub(crate) fn header_value(v: &str) -> Result<(), String> {
    if v.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
        Err(format!("invalid header value {v:?}"))
    } else {
        Ok(())
    }
}

/// An absolute request path as Gateway API allows it.
pub(crate) fn path(p: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@%".contains(&b);
    if p.starts_with('/') && p.bytes().all(allowed) && !p.contains("//") {
        Ok(())
    } else {
        Err(format!("invalid path {p:?}"))
    }
}

/// A regular expression Envoy accepts: one RE2 compiles into a program no
/// larger than Envoy's limit (see [`crate::re2`]).
pub(crate) fn regex(r: &str) -> Result<(), String> {
    crate::re2::check(r)
        .map(drop)
        .map_err(|e| format!("invalid regular expression {r:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(hostname("foo.example.com").is_ok());
        assert!(hostname("*.example.com").is_ok());
        assert!(hostname("a").is_ok());
        assert!(hostname("Foo.com").is_err());
        assert!(hostname("foo*.com").is_err());
        assert!(hostname("*").is_err());
        assert!(hostname("-a.com").is_err());
        assert!(hostname("a..com").is_err());
    }

    #[test]
    fn others() {
        assert!(header_name("X-Foo").is_ok());
        assert!(header_name("x foo").is_err());
        assert!(header_name(":path").is_err());
        assert!(modifiable_header("Host").is_err());
        assert!(header_value("a\r\nb").is_err());
        assert!(path("/a/b").is_ok());
        assert!(path("a").is_err());
        assert!(path("/a?b").is_err());
        assert!(regex("/v[0-9]+/.*").is_ok());
        assert!(regex("(").is_err());
    }

    #[test]
    fn regexes_as_envoy_sees_them() {
        assert_eq!(
            regex("[a-z]{97}"),
            Err(
                "invalid regular expression \"[a-z]{97}\": RE2 program size 101 exceeds \
                 Envoy's limit of 100"
                    .to_owned()
            )
        );
        assert!(regex("[a-z]{96}").is_ok());
        // Rust's regex-syntax accepts these; RE2 does not.
        assert_eq!(
            regex("(?x) a"),
            Err("invalid regular expression \"(?x) a\": invalid perl operator: (?x".to_owned())
        );
        assert!(regex("\\u00e9").is_err());
        assert!(regex("").is_err());
    }
}
