//! `x-kubernetes-validations`: CEL rules, compiled once with the `cel`
//! crate, evaluated with `self` bound to the value at the rule's node, as
//! the API server binds it.

use crate::schema::Schema;
use crate::{FieldError, FieldErrorKind};
use cel::ExecutionError;
use cel::extractors::This;
use cel::objects::{Key, Map as CelMap, OptionalValue};
use cel::{Context, Env, Program, Value as Cel};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

/// The CEL environment of every rule: the standard library with the
/// `strings` extension, as the API server's (Kubernetes enables cel-go's
/// `ext.Strings`). Kubernetes' own functions are added per evaluation
/// ([`kubernetes_functions`]).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // Fails only when an overload is declared twice, which a fresh stdlib
    // environment never has; a rule using a string function would then fail
    // as undeclared, i.e. closed.
    let _ = env.add_extension(cel::extensions::strings);
    Arc::new(env)
});

/// Named functions a rule may call: the standard library's, the strings
/// extension's and the Kubernetes library functions registered here. A
/// rule naming anything else is refused when the bundle is read (a test
/// proves every name here is callable). Operators (`_==_`, `@in`, …) are
/// the interpreter's own and always there.
pub(crate) const KNOWN_FUNCTIONS: &[&str] = &[
    // Standard library (macros expand before references are taken, but
    // `has` and friends are listed in case a version reports them).
    "has",
    "all",
    "exists",
    "exists_one",
    "filter",
    "map",
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "duration",
    "timestamp",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "type",
    "dyn",
    // cel-go's ext.Strings, as the strings extension of the cel crate.
    "charAt",
    "indexOf",
    "lastIndexOf",
    "join",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
    "reverse",
    // cel-go's optional library (on in the cel crate's stdlib).
    "hasValue",
    // Kubernetes' CEL library (k8s.io/apiserver/pkg/cel/library), the
    // functions implemented in [`kubernetes_functions`].
    "isIP",
    // Kubernetes' format library: `format.<name>()` names a format and
    // `<format>.validate(s)` gives its errors for `s`, if any.
    "dns1123Subdomain",
    "qualifiedName",
    "validate",
];

/// Why a rule failed, as the rule's `reason` says (the API server's field
/// error types); `FieldValueInvalid` when it says nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleReason {
    /// `FieldValueInvalid`.
    #[default]
    Invalid,
    /// `FieldValueForbidden`.
    Forbidden,
    /// `FieldValueRequired`.
    Required,
    /// `FieldValueDuplicate`.
    Duplicate,
}

impl fmt::Display for RuleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Invalid => "Invalid value",
            Self::Forbidden => "Forbidden",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
        })
    }
}

/// One compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub source: String,
    program: Program,
    /// Uses `oldSelf`: checked only on update, which a file never is.
    pub transition: bool,
    message: Option<String>,
    message_expression: Option<Program>,
    pub reason: RuleReason,
    field_path: Option<String>,
}

impl Rule {
    /// Reads and compiles one `x-kubernetes-validations` entry.
    pub(crate) fn parse(json: &Json) -> Result<Rule, String> {
        let obj = json.as_object().ok_or("not a mapping")?;
        let mut source = None;
        let mut message = None;
        let mut message_expression = None;
        let mut reason = RuleReason::default();
        let mut field_path = None;
        for (key, value) in obj {
            let text = || {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{key} is not a string"))
            };
            match key.as_str() {
                "rule" => source = Some(text()?),
                "message" => message = Some(text()?),
                "messageExpression" => message_expression = Some(compile(&text()?)?),
                "reason" => {
                    reason = match text()?.as_str() {
                        "FieldValueInvalid" => RuleReason::Invalid,
                        "FieldValueForbidden" => RuleReason::Forbidden,
                        "FieldValueRequired" => RuleReason::Required,
                        "FieldValueDuplicate" => RuleReason::Duplicate,
                        other => return Err(format!("unknown reason {other}")),
                    }
                }
                "fieldPath" => field_path = Some(text()?),
                // Only changes how transition rules see a missing old value.
                "optionalOldSelf" => {}
                other => return Err(format!("unknown key {other}")),
            }
        }
        let source = source.ok_or("no rule")?;
        let program = compile(&source).map_err(|e| format!("rule {source:?}: {e}"))?;
        let transition = program.references().has_variable("oldSelf");
        Ok(Rule {
            source,
            program,
            transition,
            message,
            message_expression,
            reason,
            field_path,
        })
    }

    /// The message of a failure: `messageExpression`'s string when it gives
    /// one, else `message`, else the API server's default.
    fn message(&self, context: &Context<'_, '_>) -> String {
        if let Some(expression) = &self.message_expression
            && let Ok(Cel::String(text)) = expression.execute(context)
            && !text.trim().is_empty()
            && !text.contains('\n')
        {
            return text.to_string();
        }
        match &self.message {
            Some(message) => message.clone(),
            None => format!("failed rule: {}", self.source),
        }
    }

    /// The path a failure is reported at: the node's, plus `fieldPath`.
    fn path(&self, node: &str) -> String {
        match &self.field_path {
            None => node.to_owned(),
            Some(relative) => {
                let relative = relative.strip_prefix('.').unwrap_or(relative);
                if node.is_empty() {
                    relative.to_owned()
                } else if relative.starts_with('[') {
                    format!("{node}{relative}")
                } else {
                    format!("{node}.{relative}")
                }
            }
        }
    }
}

/// Parses `source` and checks that every function it calls is one we can
/// evaluate, so an unknown function is found when the bundle is read, not
/// when an object reaches the rule.
fn compile(source: &str) -> Result<Program, String> {
    let program = ENV.compile(source).map_err(|e| e.to_string())?;
    let unknown: Vec<String> = program
        .references()
        .functions()
        .into_iter()
        .filter(|name| !is_operator(name) && !KNOWN_FUNCTIONS.contains(name))
        .map(str::to_owned)
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "calls functions this validator does not implement: {}",
            unknown.join(", ")
        ));
    }
    Ok(program)
}

/// The parser's names of operators: `_==_`, `!_`, `-_`, `@in`, `_[_]`, …
fn is_operator(name: &str) -> bool {
    name.starts_with(['_', '!', '-', '@'])
}

/// A root context with Kubernetes' CEL library functions (those rules may
/// call that the `cel` crate lacks), with Kubernetes' semantics.
pub(crate) fn kubernetes_functions() -> Context<'static, 'static> {
    let mut context = Context::with_env(ENV.clone());
    // isIP(string) bool: a valid IPv4 or IPv6 address; like Kubernetes,
    // no zone, no IPv4-mapped IPv6 form, no leading zeros in IPv4 octets
    // (Rust's parser already refuses zones and leading zeros).
    let _ = context.add_function("isIP", |s: Arc<String>| is_ip(&s));
    // format.<name>() is the format's name as a string; validate() on it
    // returns optional.none() for a valid value and optional.of(errors)
    // otherwise, as Kubernetes' format library does. An unknown format
    // name cannot be reached: only the names below are callable.
    let _ = context.add_function("format.dns1123Subdomain", || {
        Format::Dns1123Subdomain.name().to_owned()
    });
    let _ = context.add_function("format.qualifiedName", || {
        Format::QualifiedName.name().to_owned()
    });
    let _ = context.add_function(
        "validate",
        |This(format): This<Arc<String>>, value: Arc<String>| -> Result<Cel, ExecutionError> {
            let format = Format::named(&format).ok_or_else(|| {
                ExecutionError::function_error("validate", format!("unknown format {format}"))
            })?;
            let errors = format.errors(&value);
            Ok(Cel::Opaque(Arc::new(if errors.is_empty() {
                OptionalValue::none()
            } else {
                OptionalValue::of(Cel::List(Arc::new(
                    errors
                        .into_iter()
                        .map(|e| Cel::String(Arc::new(e)))
                        .collect(),
                )))
            })))
        },
    );
    context
}

/// The formats of Kubernetes' CEL format library that the bundle uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// A DNS-1123 subdomain: lower-case alphanumerics, `-` and `.`, at most
    /// 253 characters, alphanumeric at each end of each label.
    Dns1123Subdomain,
    /// A qualified name (label and annotation keys): an optional
    /// DNS-1123 subdomain prefix and `/`, then a name of at most 63
    /// alphanumerics, `-`, `_` and `.`, alphanumeric at both ends.
    QualifiedName,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Self::Dns1123Subdomain => "dns1123Subdomain",
            Self::QualifiedName => "qualifiedName",
        }
    }

    fn named(name: &str) -> Option<Self> {
        [Self::Dns1123Subdomain, Self::QualifiedName]
            .into_iter()
            .find(|f| f.name() == name)
    }

    /// Why `value` is not of this format (empty when it is).
    fn errors(self, value: &str) -> Vec<String> {
        match self {
            Self::Dns1123Subdomain => dns1123_subdomain_errors(value),
            Self::QualifiedName => qualified_name_errors(value),
        }
    }
}

fn dns1123_subdomain_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 253 {
        errors.push("must be no more than 253 characters".to_owned());
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes.iter().all(|b| alnum(b) || *b == b'-')
    };
    if !value.split('.').all(label_ok) {
        errors.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character"
                .to_owned(),
        );
    }
    errors
}

fn qualified_name_errors(value: &str) -> Vec<String> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    let mut errors = Vec::new();
    match prefix {
        Some("") => errors.push("prefix part must be non-empty".to_owned()),
        Some(prefix) => errors.extend(
            dns1123_subdomain_errors(prefix)
                .into_iter()
                .map(|e| format!("prefix part {e}")),
        ),
        None => {}
    }
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > 63 {
            errors.push("name part must be no more than 63 characters".to_owned());
        }
        let bytes = name.as_bytes();
        let ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            errors.push(
                "name part must consist of alphanumeric characters, '-', '_' or '.', \
                 and must start and end with an alphanumeric character"
                    .to_owned(),
            );
        }
    }
    if value.split('/').count() > 2 {
        errors.push("a qualified name has at most one '/'".to_owned());
    }
    errors
}

/// Kubernetes' `isIP`.
pub(crate) fn is_ip(s: &str) -> bool {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => true,
        Ok(IpAddr::V6(v6)) => v6.to_ipv4_mapped().is_none(),
        Err(_) => false,
    }
}

/// CEL reserved words: a property so named is reached as `__name__`.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A property name as CEL rules see it (Kubernetes' escaping), or `None`
/// when rules cannot reach it at all.
pub(crate) fn escape_property(name: &str) -> Option<String> {
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '.' | '-' | '/'));
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
    {
        return None;
    }
    if !name.contains(['_', '.', '-', '/']) {
        return Some(name.to_owned());
    }
    Some(
        name.replace("__", "__underscores__")
            .replace('.', "__dot__")
            .replace('-', "__dash__")
            .replace('/', "__slash__"),
    )
}

/// Evaluates every rule of `schema` and below on `value` (already checked
/// against the structural schema), bottom-up, returning `value` as CEL.
pub(crate) fn evaluate(
    schema: &Schema,
    value: &Json,
    path: &str,
    root: &Context<'_, '_>,
    errors: &mut Vec<FieldError>,
) -> Cel {
    let cel = match value {
        Json::Object(obj) => {
            let mut map: HashMap<Key, Cel> = HashMap::with_capacity(obj.len());
            for (name, child) in obj {
                let child_path = join(path, name);
                if let Some(sub) = schema.properties.get(name) {
                    let converted = evaluate(sub, child, &child_path, root, errors);
                    if let Some(escaped) = escape_property(name) {
                        map.insert(Key::String(Arc::new(escaped)), converted);
                    }
                } else if let Some(sub) = &schema.additional_properties {
                    let child_path = format!("{path}[{name}]");
                    let converted = evaluate(sub, child, &child_path, root, errors);
                    map.insert(Key::String(Arc::new(name.clone())), converted);
                } else {
                    // Unknown fields were refused before; only
                    // x-kubernetes-preserve-unknown-fields gets here.
                    let converted = evaluate(&Schema::default(), child, &child_path, root, errors);
                    map.insert(Key::String(Arc::new(name.clone())), converted);
                }
            }
            Cel::Map(CelMap { map: Arc::new(map) })
        }
        Json::Array(items) => {
            let default = Schema::default();
            let sub = schema.items.as_deref().unwrap_or(&default);
            let list = items
                .iter()
                .enumerate()
                .map(|(i, item)| evaluate(sub, item, &format!("{path}[{i}]"), root, errors))
                .collect();
            Cel::List(Arc::new(list))
        }
        Json::String(s) => Cel::String(Arc::new(s.clone())),
        Json::Bool(b) => Cel::Bool(*b),
        Json::Null => Cel::Null,
        Json::Number(n) => number(schema, n),
    };
    if schema.rules.is_empty() {
        return cel;
    }
    let mut context = root.new_inner_scope();
    context.add_variable_from_value("self", cel.clone());
    for rule in &schema.rules {
        if rule.transition {
            // Transition rules compare with the stored object; on create,
            // which is what reading a file is, the API server skips them.
            continue;
        }
        let kind = match rule.program.execute(&context) {
            Ok(Cel::Bool(true)) => continue,
            Ok(Cel::Bool(false)) => FieldErrorKind::Rule {
                reason: rule.reason,
                message: rule.message(&context),
            },
            Ok(other) => FieldErrorKind::RuleNotEvaluated {
                rule: rule.source.clone(),
                message: rule.message(&context),
                error: format!("gave {other:?}, not a boolean"),
            },
            // As the API server: an error (a field the rule reads is
            // absent, say) refuses the object.
            Err(e) => FieldErrorKind::RuleNotEvaluated {
                rule: rule.source.clone(),
                message: rule.message(&context),
                error: e.to_string(),
            },
        };
        errors.push(FieldError {
            path: rule.path(path),
            kind,
        });
    }
    cel
}

/// A number as CEL sees it: a double in a `number` field, else an int
/// (an integral float too: the API server's JSON decoding reads it so).
fn number(schema: &Schema, n: &serde_json::Number) -> Cel {
    if schema.ty == Some(crate::schema::Type::Number) {
        return n.as_f64().map_or(Cel::Null, Cel::Float);
    }
    if let Some(i) = n.as_i64() {
        return Cel::Int(i);
    }
    if let Some(u) = n.as_u64() {
        return Cel::UInt(u);
    }
    match n.as_f64() {
        // Below 2^53 the float is exactly that integer.
        #[allow(clippy::cast_possible_truncation)]
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Cel::Int(f as i64),
        Some(f) => Cel::Float(f),
        None => Cel::Null,
    }
}

/// `path.name`, or `name` at the root.
pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every function [`KNOWN_FUNCTIONS`] allows is callable, so a rule
    /// that passes the compile check can be evaluated.
    #[test]
    fn every_known_function_is_callable() {
        let calls = [
            ("has", "has({'a': 1}.a)"),
            ("all", "[1].all(x, x > 0)"),
            ("exists", "[1].exists(x, x > 0)"),
            ("exists_one", "[1].exists_one(x, x > 0)"),
            ("filter", "[1].filter(x, x > 0).size() == 1"),
            ("map", "[1].map(x, x * 2) == [2]"),
            ("size", "size('ab') == 2 && 'ab'.size() == 2"),
            ("contains", "'abc'.contains('b')"),
            ("startsWith", "'abc'.startsWith('a')"),
            ("endsWith", "'abc'.endsWith('c')"),
            ("matches", "'abc'.matches('^a.c$')"),
            ("duration", "duration('1h') > duration('1s')"),
            (
                "timestamp",
                "timestamp('2026-01-01T00:00:00Z') > timestamp('2025-01-01T00:00:00Z')",
            ),
            ("int", "int('1') == 1"),
            ("uint", "uint(1) == 1u"),
            ("double", "double(1) == 1.0"),
            ("string", "string(1) == '1'"),
            ("bool", "bool('true')"),
            ("bytes", "bytes('a') == b'a'"),
            ("type", "type(1) == int"),
            ("dyn", "dyn(1) == 1"),
            ("charAt", "'abc'.charAt(1) == 'b'"),
            ("indexOf", "'abc'.indexOf('c') == 2"),
            ("lastIndexOf", "'abcc'.lastIndexOf('c') == 3"),
            ("join", "['a', 'b'].join('-') == 'a-b'"),
            ("lowerAscii", "'AB'.lowerAscii() == 'ab'"),
            ("upperAscii", "'ab'.upperAscii() == 'AB'"),
            ("trim", "' a '.trim() == 'a'"),
            ("replace", "'aa'.replace('a', 'b') == 'bb'"),
            ("split", "'a/b'.split('/') == ['a', 'b']"),
            ("substring", "'abc'.substring(1) == 'bc'"),
            ("reverse", "'ab'.reverse() == 'ba'"),
            (
                "hasValue",
                "format.qualifiedName().validate('a/b/c').hasValue()",
            ),
            (
                "isIP",
                "isIP('10.0.0.1') && isIP('::1') && !isIP('a') && !isIP('::ffff:1.2.3.4')",
            ),
            (
                "dns1123Subdomain",
                "!format.dns1123Subdomain().validate('a.b-c').hasValue()",
            ),
            (
                "qualifiedName",
                "!format.qualifiedName().validate('example.com/a_b').hasValue()",
            ),
            (
                "validate",
                "format.dns1123Subdomain().validate('A_b').hasValue() \
                 && format.qualifiedName().validate('-a').hasValue() \
                 && !format.qualifiedName().validate('a').hasValue()",
            ),
        ];
        let named: Vec<&str> = calls.iter().map(|(name, _)| *name).collect();
        assert_eq!(named, KNOWN_FUNCTIONS, "one call per known function");
        let context = kubernetes_functions();
        for (name, source) in calls {
            let program = compile(source).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                program.execute(&context),
                Ok(Cel::Bool(true)),
                "{name}: {source}"
            );
        }
    }

    #[test]
    fn is_ip_follows_kubernetes() {
        assert!(is_ip("192.168.0.1"));
        assert!(is_ip("2001:db8::1"));
        assert!(!is_ip("192.168.000.1"), "leading zeros");
        assert!(!is_ip("fe80::1%eth0"), "zone");
        assert!(!is_ip("::ffff:192.168.0.1"), "IPv4-mapped");
        assert!(!is_ip("example.com"));
    }

    #[test]
    fn property_names_escape_as_kubernetes_does() {
        assert_eq!(
            escape_property("namespace").as_deref(),
            Some("__namespace__")
        );
        assert_eq!(escape_property("name").as_deref(), Some("name"));
        assert_eq!(
            escape_property("a-b.c/d").as_deref(),
            Some("a__dash__b__dot__c__slash__d")
        );
        assert_eq!(
            escape_property("a__b").as_deref(),
            Some("a__underscores__b")
        );
        assert_eq!(escape_property("1a"), None);
    }
}
