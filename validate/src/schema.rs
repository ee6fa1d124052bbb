//! A CRD version's `openAPIV3Schema`, read once into a tree the validator
//! walks. Every keyword the schema uses must be known here: one we did not
//! know would be a constraint silently not checked, so it is a build error.

use crate::rules::{self, Rule};
use regex::Regex;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::fmt;

/// The `type` of a schema node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "object" => Self::Object,
            "array" => Self::Array,
            "string" => Self::String,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Object => "object",
            Self::Array => "array",
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
        }
    }
}

/// The string formats checked, as the API server checks them. Others
/// (`int32`, `int64`, `uint32` on numbers, which the API server does not
/// check either) are accepted as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A dotted-quad IPv4 address.
    Ipv4,
    /// An IPv6 address.
    Ipv6,
    /// An RFC 3339 time.
    DateTime,
}

/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum ListType {
    #[default]
    Atomic,
    /// Items are unique scalars.
    Set,
    /// Items are objects unique by these keys.
    Map(Vec<String>),
}

/// One schema node.
#[derive(Debug, Default)]
pub(crate) struct Schema {
    pub ty: Option<Type>,
    pub nullable: bool,
    pub int_or_string: bool,
    pub preserve_unknown_fields: bool,
    pub properties: BTreeMap<String, Schema>,
    pub additional_properties: Option<Box<Schema>>,
    pub items: Option<Box<Schema>>,
    pub required: Vec<String>,
    pub enumeration: Option<Vec<Json>>,
    pub pattern: Option<Regex>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub minimum: Option<f64>,
    pub exclusive_minimum: bool,
    pub maximum: Option<f64>,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub unique_items: bool,
    pub format: Option<Format>,
    pub list_type: ListType,
    pub default: Option<Json>,
    pub all_of: Vec<Schema>,
    pub any_of: Vec<Schema>,
    pub one_of: Vec<Schema>,
    pub not: Option<Box<Schema>>,
    pub rules: Vec<Rule>,
}

/// Something in the bundle that could not be read into a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Where: CRD, version and path of the schema node.
    pub at: String,
    /// What.
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Keywords that say nothing the validator checks.
const DOCUMENTATION: &[&str] = &[
    "description",
    "title",
    "example",
    "externalDocs",
    // Only matters to server-side apply's merging.
    "x-kubernetes-map-type",
];

impl Schema {
    /// Reads `json` at `at`; problems go to `errors` (the node is still
    /// returned, so one bad keyword reports and the rest is read).
    pub(crate) fn parse(json: &Json, at: &str, errors: &mut Vec<SchemaError>) -> Schema {
        let mut schema = Schema::default();
        let Some(obj) = json.as_object() else {
            errors.push(err(at, "schema node is not a mapping"));
            return schema;
        };
        for (key, value) in obj {
            schema.keyword(key, value, obj, at, errors);
        }
        if obj.contains_key("x-kubernetes-list-map-keys")
            && !matches!(schema.list_type, ListType::Map(_))
        {
            errors.push(err(at, "x-kubernetes-list-map-keys without list-type map"));
        }
        schema
    }

    fn keyword(
        &mut self,
        key: &str,
        value: &Json,
        obj: &Map<String, Json>,
        at: &str,
        errors: &mut Vec<SchemaError>,
    ) {
        let count = |errors: &mut Vec<SchemaError>| {
            value.as_u64().or_else(|| {
                errors.push(err(at, &format!("{key} is not a count")));
                None
            })
        };
        let number = |errors: &mut Vec<SchemaError>| {
            value.as_f64().or_else(|| {
                errors.push(err(at, &format!("{key} is not a number")));
                None
            })
        };
        let flag = |errors: &mut Vec<SchemaError>| {
            value.as_bool().unwrap_or_else(|| {
                errors.push(err(at, &format!("{key} is not a boolean")));
                false
            })
        };
        match key {
            k if DOCUMENTATION.contains(&k) => {}
            "type" => match value.as_str().and_then(Type::parse) {
                Some(ty) => self.ty = Some(ty),
                None => errors.push(err(at, &format!("unknown type {value}"))),
            },
            "nullable" => self.nullable = flag(errors),
            "x-kubernetes-int-or-string" => self.int_or_string = flag(errors),
            "x-kubernetes-preserve-unknown-fields" => self.preserve_unknown_fields = flag(errors),
            "properties" => match value.as_object() {
                Some(props) => {
                    for (name, sub) in props {
                        let sub_at = format!("{at}.{name}");
                        self.properties
                            .insert(name.clone(), Schema::parse(sub, &sub_at, errors));
                    }
                }
                None => errors.push(err(at, "properties is not a mapping")),
            },
            "additionalProperties" => match value {
                Json::Bool(true) => self.preserve_unknown_fields = true,
                Json::Bool(false) => {}
                sub => {
                    let sub_at = format!("{at}[*]");
                    self.additional_properties =
                        Some(Box::new(Schema::parse(sub, &sub_at, errors)));
                }
            },
            "items" => {
                let sub_at = format!("{at}[]");
                self.items = Some(Box::new(Schema::parse(value, &sub_at, errors)));
            }
            "required" => match strings(value) {
                Some(names) => self.required = names,
                None => errors.push(err(at, "required is not a list of names")),
            },
            "enum" => match value.as_array() {
                Some(values) => self.enumeration = Some(values.clone()),
                None => errors.push(err(at, "enum is not a list")),
            },
            "pattern" => match value.as_str().map(Regex::new) {
                Some(Ok(re)) => self.pattern = Some(re),
                Some(Err(e)) => errors.push(err(at, &format!("pattern does not compile: {e}"))),
                None => errors.push(err(at, "pattern is not a string")),
            },
            "minLength" => self.min_length = count(errors),
            "maxLength" => self.max_length = count(errors),
            "minItems" => self.min_items = count(errors),
            "maxItems" => self.max_items = count(errors),
            "minProperties" => self.min_properties = count(errors),
            "maxProperties" => self.max_properties = count(errors),
            "minimum" => self.minimum = number(errors),
            "maximum" => self.maximum = number(errors),
            "exclusiveMinimum" => self.exclusive_minimum = flag(errors),
            "exclusiveMaximum" => self.exclusive_maximum = flag(errors),
            "multipleOf" => self.multiple_of = number(errors),
            "uniqueItems" => self.unique_items = flag(errors),
            "format" => {
                self.format = match value.as_str() {
                    Some("ipv4") => Some(Format::Ipv4),
                    Some("ipv6") => Some(Format::Ipv6),
                    Some("date-time") => Some(Format::DateTime),
                    // Numeric formats: not checked by the API server either.
                    Some("int32" | "int64" | "uint32" | "float" | "double") => None,
                    _ => {
                        errors.push(err(at, &format!("unknown format {value}")));
                        None
                    }
                }
            }
            "x-kubernetes-list-type" => {
                self.list_type = match value.as_str() {
                    Some("atomic") => ListType::Atomic,
                    Some("set") => ListType::Set,
                    Some("map") => ListType::Map(
                        obj.get("x-kubernetes-list-map-keys")
                            .and_then(strings)
                            .unwrap_or_default(),
                    ),
                    _ => {
                        errors.push(err(at, &format!("unknown list type {value}")));
                        ListType::Atomic
                    }
                }
            }
            // Read with x-kubernetes-list-type.
            "x-kubernetes-list-map-keys" => {}
            "default" => self.default = Some(value.clone()),
            "allOf" | "anyOf" | "oneOf" => match value.as_array() {
                Some(subs) => {
                    let parsed = subs
                        .iter()
                        .enumerate()
                        .map(|(i, sub)| Schema::parse(sub, &format!("{at}({key}[{i}])"), errors))
                        .collect();
                    match key {
                        "allOf" => self.all_of = parsed,
                        "anyOf" => self.any_of = parsed,
                        _ => self.one_of = parsed,
                    }
                }
                None => errors.push(err(at, &format!("{key} is not a list"))),
            },
            "not" => {
                self.not = Some(Box::new(Schema::parse(
                    value,
                    &format!("{at}(not)"),
                    errors,
                )));
            }
            "x-kubernetes-validations" => match value.as_array() {
                Some(list) => {
                    for (i, rule) in list.iter().enumerate() {
                        match rules::Rule::parse(rule) {
                            Ok(rule) => self.rules.push(rule),
                            Err(e) => {
                                errors.push(err(at, &format!("x-kubernetes-validations[{i}]: {e}")))
                            }
                        }
                    }
                }
                None => errors.push(err(at, "x-kubernetes-validations is not a list")),
            },
            other => errors.push(err(at, &format!("unknown schema keyword {other}"))),
        }
    }

    /// Every rule of this node and the nodes below it, with their paths.
    pub(crate) fn visit_rules<'a>(&'a self, at: &str, f: &mut dyn FnMut(&str, &'a Rule)) {
        for rule in &self.rules {
            f(at, rule);
        }
        for (name, sub) in &self.properties {
            sub.visit_rules(&format!("{at}.{name}"), f);
        }
        if let Some(sub) = &self.additional_properties {
            sub.visit_rules(&format!("{at}[*]"), f);
        }
        if let Some(sub) = &self.items {
            sub.visit_rules(&format!("{at}[]"), f);
        }
    }
}

fn strings(value: &Json) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn err(at: &str, message: &str) -> SchemaError {
    SchemaError {
        at: at.to_owned(),
        message: message.to_owned(),
    }
}
