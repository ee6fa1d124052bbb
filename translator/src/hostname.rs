//! Hostname matching as the Gateway API defines it: a leading `*.` label
//! matches one or more DNS labels, never the bare parent domain.

/// Whether `pattern` (exact or `*.` wildcard) matches the concrete or
/// wildcard `host`: a wildcard pattern matches any host strictly below its
/// suffix, including narrower wildcards.
fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        // "*.example.com" → suffix ".example.com"; host must have at least one
        // more label in front of it.
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Intersection of a listener hostname and a route hostname: the more
/// specific of the two when one covers the other, else `None`.
pub(crate) fn intersect(listener: &str, route: &str) -> Option<String> {
    if listener == route {
        return Some(route.to_owned());
    }
    if covers(listener, route) {
        Some(route.to_owned())
    } else if covers(route, listener) {
        Some(listener.to_owned())
    } else {
        None
    }
}

/// The hostnames a route serves through a listener: `None` when they do not
/// intersect at all; `Some(vec!["*"])` when neither restricts hostnames.
pub(crate) fn effective(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    match (listener, route.is_empty()) {
        (None, true) => Some(vec!["*".to_owned()]),
        (Some(l), true) => Some(vec![l.to_owned()]),
        (None, false) => Some(route.to_vec()),
        (Some(l), false) => {
            let mut out: Vec<String> = route.iter().filter_map(|r| intersect(l, r)).collect();
            out.sort();
            out.dedup();
            (!out.is_empty()).then_some(out)
        }
    }
}

/// Whether a listener hostname (None = any) accepts requests for `host`.
pub(crate) fn listener_accepts(listener: Option<&str>, host: &str) -> bool {
    match listener {
        None => true,
        Some(l) => l == host || covers(l, host),
    }
}

/// Specificity of a listener hostname, higher is more specific: exact names
/// beat wildcards, longer wildcards beat shorter ones, and no hostname is
/// the least specific.
pub(crate) fn specificity(listener: Option<&str>) -> (u8, usize) {
    match listener {
        None => (0, 0),
        Some(h) if h.starts_with('*') => (1, h.len()),
        Some(h) => (2, h.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_needs_a_label() {
        assert!(covers("*.example.com", "foo.example.com"));
        assert!(covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "fooexample.com"));
        assert!(covers("*.example.com", "*.foo.example.com"));
        assert!(!covers("*.foo.example.com", "*.example.com"));
    }

    #[test]
    fn intersections() {
        assert_eq!(
            intersect("*.example.com", "foo.example.com").as_deref(),
            Some("foo.example.com")
        );
        assert_eq!(
            intersect("foo.example.com", "*.example.com").as_deref(),
            Some("foo.example.com")
        );
        assert_eq!(
            intersect("*.example.com", "*.foo.example.com").as_deref(),
            Some("*.foo.example.com")
        );
        assert_eq!(intersect("foo.example.com", "bar.example.com"), None);
        assert_eq!(intersect("*.example.com", "example.com"), None);
        assert_eq!(effective(None, &[]), Some(vec!["*".to_owned()]));
        assert_eq!(effective(Some("a.com"), &["b.com".to_owned()]), None);
    }
}
