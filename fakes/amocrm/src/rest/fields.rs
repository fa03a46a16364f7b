//! Custom field values: validation with indexed paths, merging, and search strings.

use serde_json::{Value, json};

use crate::account::Field;
use crate::respond::FieldError;

/// New values for one field (`None` clears it).
#[derive(Debug)]
pub(crate) struct FieldUpdate {
    field: Field,
    values: Option<Vec<Value>>,
}

fn find_field(fields: &[Field], item: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Field> {
    if let Some(id) = item.get("field_id").filter(|v| !v.is_null()) {
        let Some(id) = id.as_i64() else {
            errors.push(FieldError::new("InvalidType", format!("{path}.field_id"), "field_id must be an integer"));
            return None;
        };
        let found = fields.iter().find(|f| f.id == id).copied();
        if found.is_none() {
            errors.push(FieldError::new(
                "NotSupportedChoice",
                format!("{path}.field_id"),
                format!("Field with id {id} not found"),
            ));
        }
        return found;
    }
    if let Some(code) = item.get("field_code").filter(|v| !v.is_null()) {
        let Some(code) = code.as_str() else {
            errors.push(FieldError::new("InvalidType", format!("{path}.field_code"), "field_code must be a string"));
            return None;
        };
        let found = fields.iter().find(|f| f.code == Some(code)).copied();
        if found.is_none() {
            errors.push(FieldError::new(
                "NotSupportedChoice",
                format!("{path}.field_code"),
                format!("Field with code {code} not found"),
            ));
        }
        return found;
    }
    errors.push(FieldError::new("NotBlank", format!("{path}.field_id"), "field_id or field_code is required"));
    None
}

fn parse_value(field: &Field, item: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Value> {
    let Some(obj) = item.as_object() else {
        errors.push(FieldError::new("InvalidType", path, "value must be an object"));
        return None;
    };
    let text = match obj.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if field.kind == "text" => n.to_string(),
        Some(_) => {
            errors.push(FieldError::new("InvalidType", format!("{path}.value"), "value must be a string"));
            return None;
        }
        None => {
            errors.push(FieldError::new("NotBlank", format!("{path}.value"), "value is required"));
            return None;
        }
    };
    if field.enums.is_empty() {
        for key in ["enum_id", "enum_code"] {
            if obj.get(key).is_some_and(|v| !v.is_null()) {
                errors.push(FieldError::new(
                    "NotSupportedChoice",
                    format!("{path}.{key}"),
                    format!("Field {} has no enums", field.id),
                ));
                return None;
            }
        }
        return Some(json!({"value": text}));
    }
    let chosen = if let Some(code) = obj.get("enum_code").filter(|v| !v.is_null()) {
        let found = code.as_str().and_then(|c| field.enums.iter().find(|e| e.code == c));
        if found.is_none() {
            errors.push(FieldError::new(
                "NotSupportedChoice",
                format!("{path}.enum_code"),
                format!("Enum code {code} is not supported by field {}", field.id),
            ));
            return None;
        }
        found
    } else if let Some(id) = obj.get("enum_id").filter(|v| !v.is_null()) {
        let found = id.as_i64().and_then(|i| field.enums.iter().find(|e| e.id == i));
        if found.is_none() {
            errors.push(FieldError::new(
                "NotSupportedChoice",
                format!("{path}.enum_id"),
                format!("Enum id {id} is not supported by field {}", field.id),
            ));
            return None;
        }
        found
    } else {
        field.enums.first()
    };
    let e = chosen?;
    Some(json!({"value": text, "enum_id": e.id, "enum_code": e.code, "enum": e.code}))
}

/// Validates `custom_fields_values` of a request item against `fields`.
pub(crate) fn parse(fields: &[Field], value: &Value, errors: &mut Vec<FieldError>) -> Vec<FieldUpdate> {
    let Some(items) = value.as_array() else {
        if !value.is_null() {
            errors.push(FieldError::new(
                "InvalidType",
                "custom_fields_values",
                "custom_fields_values must be an array",
            ));
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("custom_fields_values.{i}");
        let Some(field) = find_field(fields, item, &path, errors) else {
            continue;
        };
        let values = match item.get("values") {
            None | Some(Value::Null) => None,
            Some(Value::Array(vals)) => {
                let mut parsed = Vec::new();
                for (j, v) in vals.iter().enumerate() {
                    if let Some(v) = parse_value(&field, v, &format!("{path}.values.{j}"), errors) {
                        parsed.push(v);
                    }
                }
                Some(parsed)
            }
            Some(_) => {
                errors.push(FieldError::new("InvalidType", format!("{path}.values"), "values must be an array"));
                continue;
            }
        };
        out.push(FieldUpdate { field, values });
    }
    out
}

/// Applies `updates` to stored values (an array or `null`): each field given
/// replaces that field's values; fields not given stay.
pub(crate) fn apply(existing: &Value, updates: Vec<FieldUpdate>) -> Value {
    let mut current: Vec<Value> = existing.as_array().cloned().unwrap_or_default();
    for up in updates {
        current.retain(|entry| entry.get("field_id").and_then(Value::as_i64) != Some(up.field.id));
        if let Some(values) = up.values.filter(|v| !v.is_empty()) {
            current.push(json!({
                "field_id": up.field.id,
                "field_name": up.field.name,
                "field_code": up.field.code,
                "field_type": up.field.kind,
                "values": values,
            }));
        }
    }
    if current.is_empty() { Value::Null } else { Value::Array(current) }
}

/// Every stored value string, verbatim.
pub(crate) fn value_strings(stored: &Value) -> Vec<&str> {
    stored
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("values").and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.get("value").and_then(Value::as_str))
        .collect()
}

/// The stored values of field `code` ("PHONE", "EMAIL").
pub(crate) fn values_of<'a>(stored: &'a Value, code: &str) -> Vec<&'a str> {
    stored
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry.get("field_code").and_then(Value::as_str) == Some(code))
        .filter_map(|entry| entry.get("values").and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.get("value").and_then(Value::as_str))
        .collect()
}
