//! Validation of objects as the Kubernetes API server validates them on
//! create: against their CRD version's `openAPIV3Schema` (types, value
//! constraints, unknown fields) and its `x-kubernetes-validations` CEL
//! rules. Standalone Gatewright reads objects from files that no API server
//! saw; this is what refuses the ones a cluster would.
//!
//! The installed bundle ([`installed`]) is the Gateway API experimental
//! CRDs (a superset of the standard channel) and Gatewright's own, embedded
//! at build time and compiled once. Kinds with no CRD there (Service,
//! Secret, …) are not checked. Transition rules (those using `oldSelf`)
//! only apply to updates, and reading a file is a create, so they are
//! skipped, as the API server skips them on create.

mod bundle;
pub use bundle::file_names as bundle_files;
mod rules;
mod schema;
mod structural;

pub use rules::RuleReason;
pub use schema::{Format, SchemaError};

use schema::Schema;
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::LazyLock;

/// One thing wrong with an object, at a field path such as
/// `spec.listeners[1].port`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field (empty for the object itself).
    pub path: String,
    /// What is wrong with it.
    pub kind: FieldErrorKind,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FieldErrorKind {
    /// A required field is missing.
    Required,
    /// A field the schema does not define (the API server would drop it;
    /// kubectl's strict validation refuses it, and so do we).
    UnknownField,
    /// The value has the wrong type.
    Type {
        /// The type the schema asks for.
        expected: String,
        /// The value, as JSON.
        value: String,
    },
    /// The value is not one of the schema's `enum`.
    NotSupported {
        /// The value, as JSON.
        value: String,
        /// The allowed values, as JSON.
        allowed: Vec<String>,
    },
    /// The string does not match `pattern`.
    Pattern {
        /// The value.
        value: String,
        /// The pattern.
        pattern: String,
    },
    /// The string is not of its `format`.
    Format {
        /// The value.
        value: String,
        /// The format.
        format: Format,
    },
    /// Longer than `maxLength` characters.
    TooLong {
        /// maxLength.
        max: u64,
        /// The length.
        len: u64,
    },
    /// Shorter than `minLength` characters.
    TooShort {
        /// minLength.
        min: u64,
        /// The length.
        len: u64,
    },
    /// More than `maxItems` items.
    TooManyItems {
        /// maxItems.
        max: u64,
        /// The count.
        count: u64,
    },
    /// Fewer than `minItems` items.
    TooFewItems {
        /// minItems.
        min: u64,
        /// The count.
        count: u64,
    },
    /// More than `maxProperties` entries.
    TooManyProperties {
        /// maxProperties.
        max: u64,
        /// The count.
        count: u64,
    },
    /// Fewer than `minProperties` entries.
    TooFewProperties {
        /// minProperties.
        min: u64,
        /// The count.
        count: u64,
    },
    /// Below `minimum`.
    Below {
        /// The value.
        value: String,
        /// minimum.
        min: f64,
        /// exclusiveMinimum.
        exclusive: bool,
    },
    /// Above `maximum`.
    Above {
        /// The value.
        value: String,
        /// maximum.
        max: f64,
        /// exclusiveMaximum.
        exclusive: bool,
    },
    /// Not a multiple of `multipleOf`.
    NotMultiple {
        /// The value.
        value: String,
        /// multipleOf.
        step: f64,
    },
    /// An item repeats an earlier one (set, `uniqueItems`) or its key
    /// (list-type map).
    Duplicate {
        /// The item or its key, as JSON.
        value: String,
    },
    /// Matches none of `anyOf`.
    AnyOf {
        /// The value.
        value: String,
    },
    /// Matches not exactly one of `oneOf`.
    OneOf {
        /// The value.
        value: String,
        /// How many branches it matched.
        matched: usize,
    },
    /// Matches `not`.
    Not {
        /// The value.
        value: String,
    },
    /// A CEL rule is false.
    Rule {
        /// The rule's reason.
        reason: RuleReason,
        /// The rule's message.
        message: String,
    },
    /// A CEL rule could not be evaluated (as the API server, this refuses
    /// the object).
    RuleNotEvaluated {
        /// The rule.
        rule: String,
        /// The rule's message.
        message: String,
        /// Why it could not be evaluated.
        error: String,
    },
    /// The apiVersion names a version the CRD does not serve.
    VersionNotServed {
        /// The version asked for.
        version: String,
        /// The served versions.
        served: Vec<String>,
    },
    /// A kind of a CRD group that has no CRD for it.
    UnknownKind {
        /// The group.
        group: String,
    },
    /// The bundle itself could not be read (never, as a test checks).
    Bundle {
        /// The bundle's errors.
        message: String,
    },
}

impl fmt::Display for FieldErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exclusive = |e: bool| if e { "" } else { " or equal to" };
        match self {
            Self::Required => write!(f, "Required value"),
            Self::UnknownField => write!(
                f,
                "unknown field (not in the CRD's schema; a cluster would drop it)"
            ),
            Self::Type { expected, value } => {
                write!(f, "Invalid value: {value}: must be of type {expected}")
            }
            Self::NotSupported { value, allowed } => write!(
                f,
                "Unsupported value: {value}: supported values: {}",
                allowed.join(", ")
            ),
            Self::Pattern { value, pattern } => {
                write!(f, "Invalid value: {value:?}: should match '{pattern}'")
            }
            Self::Format { value, format } => {
                let name = match format {
                    Format::Ipv4 => "ipv4",
                    Format::Ipv6 => "ipv6",
                    Format::DateTime => "date-time",
                };
                write!(f, "Invalid value: {value:?}: must be of format {name}")
            }
            Self::TooLong { max, len } => write!(
                f,
                "Too long: may not be more than {max} characters (has {len})"
            ),
            Self::TooShort { min, len } => write!(
                f,
                "Invalid value: should be at least {min} characters long (has {len})"
            ),
            Self::TooManyItems { max, count } => {
                write!(f, "Too many: {count}: must have at most {max} items")
            }
            Self::TooFewItems { min, count } => {
                write!(
                    f,
                    "Invalid value: {count} items: should have at least {min} items"
                )
            }
            Self::TooManyProperties { max, count } => {
                write!(f, "Too many: {count}: must have at most {max} properties")
            }
            Self::TooFewProperties { min, count } => write!(
                f,
                "Invalid value: {count} properties: should have at least {min} properties"
            ),
            Self::Below {
                value,
                min,
                exclusive: e,
            } => write!(
                f,
                "Invalid value: {value}: should be greater than{} {min}",
                exclusive(*e)
            ),
            Self::Above {
                value,
                max,
                exclusive: e,
            } => write!(
                f,
                "Invalid value: {value}: should be less than{} {max}",
                exclusive(*e)
            ),
            Self::NotMultiple { value, step } => {
                write!(f, "Invalid value: {value}: should be a multiple of {step}")
            }
            Self::Duplicate { value } => write!(f, "Duplicate value: {value}"),
            Self::AnyOf { value } => write!(
                f,
                "Invalid value: {value}: must match at least one schema of anyOf"
            ),
            Self::OneOf { value, matched } => write!(
                f,
                "Invalid value: {value}: must match exactly one schema of oneOf (matches {matched})"
            ),
            Self::Not { value } => {
                write!(f, "Invalid value: {value}: must not match the 'not' schema")
            }
            Self::Rule { reason, message } => match reason {
                RuleReason::Invalid => write!(f, "{message}"),
                other => write!(f, "{other}: {message}"),
            },
            Self::RuleNotEvaluated {
                rule,
                message,
                error,
            } => write!(
                f,
                "{message} (rule `{rule}` could not be evaluated: {error})"
            ),
            Self::VersionNotServed { version, served } => write!(
                f,
                "version {version} is not served by the CRD (served: {})",
                served.join(", ")
            ),
            Self::UnknownKind { group } => {
                write!(f, "no CRD of group {group} defines this kind")
            }
            Self::Bundle { message } => write!(f, "the CRD bundle cannot be read: {message}"),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.path, self.kind)
        }
    }
}

/// Why an object is refused: every field error found.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The errors, in field order (structural ones, then CEL rules').
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// What validation found for an accepted object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Valid against its CRD.
    Valid,
    /// No CRD of the bundle defines the kind (a core kind): not checked.
    NoCrd,
}

/// One served version of a CRD.
#[derive(Debug)]
struct Version {
    /// Whether status is a subresource: then a create ignores `status`.
    status_subresource: bool,
    schema: Schema,
}

/// A set of CRDs, by API group and kind.
#[derive(Debug, Default)]
pub struct Crds {
    kinds: HashMap<(String, String), BTreeMap<String, Version>>,
    groups: BTreeSet<String>,
}

/// The bundle's problems when it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError {
    /// Each problem.
    pub errors: Vec<SchemaError>,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BundleError {}

static INSTALLED: LazyLock<Result<Crds, BundleError>> =
    LazyLock::new(|| Crds::from_yaml(bundle::FILES.iter().map(|(_, text)| *text)));

/// The CRDs built into this binary (see the crate docs), compiled on first
/// use.
pub fn installed() -> Result<&'static Crds, &'static BundleError> {
    INSTALLED.as_ref()
}

/// Validates `object` against the built-in bundle. A bundle that cannot be
/// read (which a test rules out) refuses every object of its groups rather
/// than let them through unchecked.
pub fn validate(object: &Json) -> Result<Checked, Refusal> {
    match installed() {
        Ok(crds) => crds.validate(object),
        Err(e) => {
            let group = api_group(object);
            if bundle::GROUPS.contains(&group) {
                Err(Refusal {
                    errors: vec![FieldError {
                        path: String::new(),
                        kind: FieldErrorKind::Bundle {
                            message: e.to_string(),
                        },
                    }],
                })
            } else {
                Ok(Checked::NoCrd)
            }
        }
    }
}

fn api_group(object: &Json) -> &str {
    object
        .get("apiVersion")
        .and_then(Json::as_str)
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(group, _)| group)
}

impl Crds {
    /// Reads the CustomResourceDefinitions among the YAML documents of
    /// `texts` (other documents are ignored), compiling every schema and
    /// rule; any problem fails the whole set.
    pub fn from_yaml<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Crds, BundleError> {
        let mut crds = Crds::default();
        let mut errors = Vec::new();
        for text in texts {
            for document in serde_yaml::Deserializer::from_str(text) {
                let json = match serde::de::Deserialize::deserialize(document)
                    .map_err(|e: serde_yaml::Error| e.to_string())
                    .and_then(|yaml: serde_yaml::Value| {
                        serde_json::to_value(yaml).map_err(|e| e.to_string())
                    }) {
                    Ok(json) => json,
                    Err(e) => {
                        errors.push(SchemaError {
                            at: "bundle".into(),
                            message: format!("invalid YAML: {e}"),
                        });
                        continue;
                    }
                };
                if json.get("kind").and_then(Json::as_str) == Some("CustomResourceDefinition") {
                    crds.add(&json, &mut errors);
                }
            }
        }
        if errors.is_empty() {
            Ok(crds)
        } else {
            Err(BundleError { errors })
        }
    }

    fn add(&mut self, crd: &Json, errors: &mut Vec<SchemaError>) {
        let spec = &crd["spec"];
        let (Some(group), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str())
        else {
            errors.push(SchemaError {
                at: "bundle".into(),
                message: "a CRD without spec.group or spec.names.kind".into(),
            });
            return;
        };
        let mut versions = BTreeMap::new();
        for version in spec["versions"].as_array().into_iter().flatten() {
            let Some(name) = version["name"].as_str() else {
                continue;
            };
            if version["served"].as_bool() != Some(true) {
                continue;
            }
            let at = format!("{kind}.{group}/{name}");
            let schema = Schema::parse(&version["schema"]["openAPIV3Schema"], &at, errors);
            versions.insert(
                name.to_owned(),
                Version {
                    status_subresource: version["subresources"].get("status").is_some(),
                    schema,
                },
            );
        }
        self.groups.insert(group.to_owned());
        self.kinds
            .insert((group.to_owned(), kind.to_owned()), versions);
    }

    /// The kinds defined, as `(group, kind)`.
    pub fn kinds(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kinds.keys().map(|(g, k)| (g.as_str(), k.as_str()))
    }

    /// Every CEL rule of every served version, with where it is and
    /// whether it is a transition rule (skipped on create).
    pub fn rules(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for ((group, kind), versions) in &self.kinds {
            for (version, v) in versions {
                let at = format!("{kind}.{group}/{version}");
                v.schema.visit_rules(&at, &mut |path, rule| {
                    out.push((path.to_owned(), rule.source.clone(), rule.transition));
                });
            }
        }
        out
    }

    /// Validates one object (a whole document: apiVersion, kind, metadata,
    /// spec, …) as the API server would on create.
    pub fn validate(&self, object: &Json) -> Result<Checked, Refusal> {
        let refuse = |path: &str, kind| {
            Err(Refusal {
                errors: vec![FieldError {
                    path: path.to_owned(),
                    kind,
                }],
            })
        };
        let api_version = object
            .get("apiVersion")
            .and_then(Json::as_str)
            .unwrap_or("");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let kind = object.get("kind").and_then(Json::as_str).unwrap_or("");
        let Some(versions) = self.kinds.get(&(group.to_owned(), kind.to_owned())) else {
            if self.groups.contains(group) {
                return refuse(
                    "kind",
                    FieldErrorKind::UnknownKind {
                        group: group.to_owned(),
                    },
                );
            }
            return Ok(Checked::NoCrd);
        };
        let Some(served) = versions.get(version) else {
            return refuse(
                "apiVersion",
                FieldErrorKind::VersionNotServed {
                    version: version.to_owned(),
                    served: versions.keys().cloned().collect(),
                },
            );
        };
        let mut value = object.clone();
        if served.status_subresource
            && let Some(obj) = value.as_object_mut()
        {
            // On create the API server resets status when it is a
            // subresource: what a file says there is never validated.
            obj.remove("status");
        }
        structural::prune_and_default(&served.schema, &mut value);
        let mut errors = Vec::new();
        check_root(&served.schema, &value, &mut errors);
        if errors.is_empty() {
            // CEL rules assume the structure holds; the API server reports
            // schema errors first too.
            let root = rules::kubernetes_functions();
            rules::evaluate(&served.schema, &value, "", &root, &mut errors);
        }
        if errors.is_empty() {
            Ok(Checked::Valid)
        } else {
            Err(Refusal { errors })
        }
    }
}

/// The object's own schema, except `metadata`, `apiVersion` and `kind`:
/// the API server validates ObjectMeta and TypeMeta itself (a CRD only
/// says metadata is an object), so their fields are never unknown.
fn check_root(schema: &Schema, value: &Json, errors: &mut Vec<FieldError>) {
    let Some(obj) = value.as_object() else {
        structural::check(schema, value, "", structural::Fields::Strict, errors);
        return;
    };
    if let Some(metadata) = obj.get("metadata")
        && !metadata.is_object()
    {
        errors.push(FieldError {
            path: "metadata".into(),
            kind: FieldErrorKind::Type {
                expected: "object".into(),
                value: structural::shown(metadata),
            },
        });
    }
    for name in &schema.required {
        if !obj.contains_key(name) {
            errors.push(FieldError {
                path: name.clone(),
                kind: FieldErrorKind::Required,
            });
        }
    }
    for (name, child) in obj {
        if name == "metadata" {
            continue;
        }
        match schema.properties.get(name) {
            Some(sub) => structural::check(sub, child, name, structural::Fields::Strict, errors),
            // TypeMeta is the API server's, whether or not the schema
            // lists it (Gatewright's own CRD, generated, does not).
            None if name == "apiVersion" || name == "kind" => {}
            None => errors.push(FieldError {
                path: name.clone(),
                kind: FieldErrorKind::UnknownField,
            }),
        }
    }
}
