//! The structural part of the API server's validation: nulls pruned,
//! defaults applied, then types and value constraints checked.

use crate::rules::join;
use crate::schema::{Format, ListType, Schema, Type};
use crate::{FieldError, FieldErrorKind};
use serde_json::Value as Json;
use std::collections::HashSet;

/// What the API server does to an object before validating it: a `null`
/// where the schema is not `nullable` is dropped, then every missing
/// property with a `default` gets it (defaults are defaulted in turn).
pub(crate) fn prune_and_default(schema: &Schema, value: &mut Json) {
    match value {
        Json::Object(obj) => {
            obj.retain(|name, child| {
                !child.is_null() || property(schema, name).is_none_or(|sub| sub.nullable)
            });
            for (name, sub) in &schema.properties {
                if let Some(default) = &sub.default
                    && !obj.contains_key(name)
                {
                    obj.insert(name.clone(), default.clone());
                }
            }
            for (name, child) in obj.iter_mut() {
                if let Some(sub) = property(schema, name) {
                    prune_and_default(sub, child);
                }
            }
        }
        Json::Array(items) => {
            if let Some(sub) = &schema.items {
                for item in items {
                    prune_and_default(sub, item);
                }
            }
        }
        _ => {}
    }
}

fn property<'a>(schema: &'a Schema, name: &str) -> Option<&'a Schema> {
    schema
        .properties
        .get(name)
        .or(schema.additional_properties.as_deref())
}

/// Whether unknown fields are refused: yes for the object's own schema,
/// no inside `allOf`/`anyOf`/`oneOf`/`not`, whose branches name only the
/// fields they constrain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fields {
    Strict,
    Partial,
}

/// Checks `value` against `schema`, adding what is wrong to `errors`.
pub(crate) fn check(
    schema: &Schema,
    value: &Json,
    path: &str,
    fields: Fields,
    errors: &mut Vec<FieldError>,
) {
    let error = |kind| FieldError {
        path: path.to_owned(),
        kind,
    };
    if value.is_null() {
        if !schema.nullable && (schema.ty.is_some() || schema.int_or_string) {
            errors.push(error(FieldErrorKind::Type {
                expected: expected_type(schema),
                value: shown(value),
            }));
        }
        return;
    }
    if schema.int_or_string {
        if !(is_integer(value) || value.is_string()) {
            errors.push(error(FieldErrorKind::Type {
                expected: expected_type(schema),
                value: shown(value),
            }));
            return;
        }
    } else if let Some(ty) = schema.ty
        && !has_type(value, ty)
    {
        errors.push(error(FieldErrorKind::Type {
            expected: expected_type(schema),
            value: shown(value),
        }));
        return;
    }

    if let Some(allowed) = &schema.enumeration
        && !allowed.contains(value)
    {
        errors.push(error(FieldErrorKind::NotSupported {
            value: shown(value),
            allowed: allowed.iter().map(shown).collect(),
        }));
    }
    match value {
        Json::String(s) => check_string(schema, s, path, errors),
        Json::Number(_) => check_number(schema, value, path, errors),
        Json::Array(items) => check_array(schema, items, path, fields, errors),
        Json::Object(obj) => check_object(schema, obj, path, fields, errors),
        Json::Bool(_) | Json::Null => {}
    }

    for sub in &schema.all_of {
        check(sub, value, path, Fields::Partial, errors);
    }
    let passes = |sub: &Schema| {
        let mut scratch = Vec::new();
        check(sub, value, path, Fields::Partial, &mut scratch);
        scratch.is_empty()
    };
    if !schema.any_of.is_empty() && !schema.any_of.iter().any(passes) {
        errors.push(error(FieldErrorKind::AnyOf {
            value: shown(value),
        }));
    }
    if !schema.one_of.is_empty() {
        let matched = schema.one_of.iter().filter(|sub| passes(sub)).count();
        if matched != 1 {
            errors.push(error(FieldErrorKind::OneOf {
                value: shown(value),
                matched,
            }));
        }
    }
    if let Some(not) = &schema.not
        && passes(not)
    {
        errors.push(error(FieldErrorKind::Not {
            value: shown(value),
        }));
    }
}

fn check_string(schema: &Schema, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    let mut push = |kind| {
        errors.push(FieldError {
            path: path.to_owned(),
            kind,
        });
    };
    // The API server counts characters (runes), not bytes.
    let len = s.chars().count() as u64;
    if let Some(max) = schema.max_length
        && len > max
    {
        push(FieldErrorKind::TooLong { max, len });
    }
    if let Some(min) = schema.min_length
        && len < min
    {
        push(FieldErrorKind::TooShort { min, len });
    }
    if let Some(pattern) = &schema.pattern
        && !pattern.is_match(s)
    {
        push(FieldErrorKind::Pattern {
            value: s.to_owned(),
            pattern: pattern.as_str().to_owned(),
        });
    }
    if let Some(format) = schema.format {
        let ok = match format {
            Format::Ipv4 => s.parse::<std::net::Ipv4Addr>().is_ok(),
            Format::Ipv6 => s.parse::<std::net::Ipv6Addr>().is_ok(),
            Format::DateTime => s.parse::<jiff::Timestamp>().is_ok(),
        };
        if !ok {
            push(FieldErrorKind::Format {
                value: s.to_owned(),
                format,
            });
        }
    }
}

fn check_number(schema: &Schema, value: &Json, path: &str, errors: &mut Vec<FieldError>) {
    let Some(n) = value.as_f64() else { return };
    let mut push = |kind| {
        errors.push(FieldError {
            path: path.to_owned(),
            kind,
        });
    };
    if let Some(min) = schema.minimum
        && (n < min || (schema.exclusive_minimum && n == min))
    {
        push(FieldErrorKind::Below {
            value: shown(value),
            min,
            exclusive: schema.exclusive_minimum,
        });
    }
    if let Some(max) = schema.maximum
        && (n > max || (schema.exclusive_maximum && n == max))
    {
        push(FieldErrorKind::Above {
            value: shown(value),
            max,
            exclusive: schema.exclusive_maximum,
        });
    }
    if let Some(step) = schema.multiple_of
        && step != 0.0
        && (n / step).fract() != 0.0
    {
        push(FieldErrorKind::NotMultiple {
            value: shown(value),
            step,
        });
    }
}

fn check_array(
    schema: &Schema,
    items: &[Json],
    path: &str,
    fields: Fields,
    errors: &mut Vec<FieldError>,
) {
    let count = items.len() as u64;
    if let Some(max) = schema.max_items
        && count > max
    {
        errors.push(FieldError {
            path: path.to_owned(),
            kind: FieldErrorKind::TooManyItems { max, count },
        });
    }
    if let Some(min) = schema.min_items
        && count < min
    {
        errors.push(FieldError {
            path: path.to_owned(),
            kind: FieldErrorKind::TooFewItems { min, count },
        });
    }
    // Sets and uniqueItems: whole items unique; maps: the key fields.
    let key_of = |item: &Json| -> String {
        match &schema.list_type {
            ListType::Map(keys) => {
                let key: serde_json::Map<String, Json> = keys
                    .iter()
                    .filter_map(|k| Some((k.clone(), item.get(k)?.clone())))
                    .collect();
                Json::Object(key).to_string()
            }
            _ => item.to_string(),
        }
    };
    if schema.unique_items || schema.list_type != ListType::Atomic {
        let mut seen = HashSet::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = key_of(item);
            if !seen.insert(key.clone()) {
                errors.push(FieldError {
                    path: format!("{path}[{i}]"),
                    kind: FieldErrorKind::Duplicate { value: key },
                });
            }
        }
    }
    if let Some(sub) = &schema.items {
        for (i, item) in items.iter().enumerate() {
            check(sub, item, &format!("{path}[{i}]"), fields, errors);
        }
    }
}

fn check_object(
    schema: &Schema,
    obj: &serde_json::Map<String, Json>,
    path: &str,
    fields: Fields,
    errors: &mut Vec<FieldError>,
) {
    let count = obj.len() as u64;
    if let Some(max) = schema.max_properties
        && count > max
    {
        errors.push(FieldError {
            path: path.to_owned(),
            kind: FieldErrorKind::TooManyProperties { max, count },
        });
    }
    if let Some(min) = schema.min_properties
        && count < min
    {
        errors.push(FieldError {
            path: path.to_owned(),
            kind: FieldErrorKind::TooFewProperties { min, count },
        });
    }
    for name in &schema.required {
        if !obj.contains_key(name) {
            errors.push(FieldError {
                path: join(path, name),
                kind: FieldErrorKind::Required,
            });
        }
    }
    for (name, child) in obj {
        if let Some(sub) = schema.properties.get(name) {
            check(sub, child, &join(path, name), fields, errors);
        } else if let Some(sub) = &schema.additional_properties {
            check(sub, child, &format!("{path}[{name}]"), fields, errors);
        } else if fields == Fields::Strict && !schema.preserve_unknown_fields {
            errors.push(FieldError {
                path: join(path, name),
                kind: FieldErrorKind::UnknownField,
            });
        }
    }
}

fn is_integer(value: &Json) -> bool {
    match value {
        // The API server's JSON decoding reads an integral float as an
        // integer.
        Json::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn has_type(value: &Json, ty: Type) -> bool {
    match ty {
        Type::Object => value.is_object(),
        Type::Array => value.is_array(),
        Type::String => value.is_string(),
        Type::Integer => is_integer(value),
        Type::Number => value.is_number(),
        Type::Boolean => value.is_boolean(),
    }
}

fn expected_type(schema: &Schema) -> String {
    if schema.int_or_string {
        "integer or string".to_owned()
    } else {
        schema.ty.map_or("a value", Type::name).to_owned()
    }
}

/// A value as an error shows it: JSON, cut short.
pub(crate) fn shown(value: &Json) -> String {
    const MAX: usize = 80;
    let text = value.to_string();
    if text.chars().count() <= MAX {
        text
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    }
}
