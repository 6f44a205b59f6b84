//! A job's payload from the command line: `--payload JSON`, `@file.json`, `-` (stdin), or
//! `key=value` pairs typed by the type's JSON Schema (`GET /api/v1/job-types`):
//! `ms=2000` is a number for `sleep`, `argv=["sh","-c","echo hi"]` an array for `command`,
//! and `env.GREETING=hello` sets a key inside an object.

use std::io::Read;

use serde_json::{Map, Value};

use super::error::{CliError, CliResult};

/// Builds the payload from `--payload` and the positional `params`; `schema` types the
/// `key=value` pairs.
pub fn build(flag: Option<&str>, params: &[String], schema: &Value) -> CliResult<Value> {
    let mut whole: Option<Value> = flag.map(|text| parse_json(text, "--payload")).transpose()?;
    let mut pairs = Map::new();
    for param in params {
        if let Some(path) = param.strip_prefix('@') {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))?;
            set_whole(&mut whole, parse_json(&text, path)?)?;
        } else if param == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
            set_whole(&mut whole, parse_json(&text, "stdin")?)?;
        } else if let Some((key, value)) = param.split_once('=') {
            let path: Vec<&str> = key.split('.').collect();
            if path.iter().any(|p| p.is_empty()) {
                return Err(CliError::usage(format!("`{param}`: an empty key")));
            }
            insert(&mut pairs, &path, typed(value, property(schema, &path)))?;
        } else {
            return Err(CliError::usage(format!(
                "`{param}` is not key=value, @file.json or - (stdin)"
            )));
        }
    }
    match (whole, pairs.is_empty()) {
        (None, _) => Ok(Value::Object(pairs)),
        (Some(v), true) => Ok(v),
        (Some(Value::Object(mut base)), false) => {
            merge(&mut base, pairs);
            Ok(Value::Object(base))
        }
        (Some(_), false) => Err(CliError::usage(
            "key=value pairs need the payload to be a JSON object",
        )),
    }
}

fn parse_json(text: &str, source: &str) -> CliResult<Value> {
    serde_json::from_str(text).map_err(|e| CliError::usage(format!("{source} is not JSON: {e}")))
}

fn set_whole(whole: &mut Option<Value>, value: Value) -> CliResult<()> {
    if whole.replace(value).is_some() {
        return Err(CliError::usage(
            "give the payload once: --payload, @file or - (stdin)",
        ));
    }
    Ok(())
}

fn merge(base: &mut Map<String, Value>, pairs: Map<String, Value>) {
    for (k, v) in pairs {
        match (base.get_mut(&k), v) {
            (Some(Value::Object(inner)), Value::Object(more)) => merge(inner, more),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn insert(map: &mut Map<String, Value>, path: &[&str], value: Value) -> CliResult<()> {
    let (first, rest) = path.split_first().unwrap_or((&"", &[]));
    if rest.is_empty() {
        map.insert((*first).to_owned(), value);
        return Ok(());
    }
    let inner = map
        .entry((*first).to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    match inner {
        Value::Object(inner) => insert(inner, rest, value),
        _ => Err(CliError::usage(format!(
            "`{first}` is set twice, as a value and as an object"
        ))),
    }
}

/// The schema of the property at `path`, looking through `oneOf` variants and
/// `additionalProperties`.
fn property<'a>(schema: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let candidates: Vec<&Value> = match schema["oneOf"].as_array() {
        Some(variants) => variants.iter().collect(),
        None => vec![schema],
    };
    let found = candidates.into_iter().find_map(|s| {
        s["properties"]
            .get(*first)
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
    })?;
    if rest.is_empty() {
        Some(found)
    } else {
        property(found, rest)
    }
}

/// `text` as the JSON type its schema says; without a schema, JSON if it parses, else a
/// string.
fn typed(text: &str, schema: Option<&Value>) -> Value {
    let kind = schema.and_then(|s| s["type"].as_str());
    let parsed = || serde_json::from_str::<Value>(text).ok();
    match kind {
        Some("string") => Value::String(text.to_owned()),
        Some("integer" | "number" | "boolean" | "array" | "object") => {
            parsed().unwrap_or_else(|| Value::String(text.to_owned()))
        }
        _ => parsed().unwrap_or_else(|| Value::String(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn command_schema() -> Value {
        json!({"type": "object", "properties": {
            "argv": {"type": "array"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "cwd": {"type": "string"},
            "timeout_ms": {"type": "integer"},
        }})
    }

    #[test]
    fn pairs_are_typed_by_the_schema() {
        let params = [
            r#"argv=["sh","-c","echo hi"]"#.to_owned(),
            "env.GREETING=42".to_owned(),
            "cwd=123".to_owned(),
            "timeout_ms=5000".to_owned(),
        ];
        let payload = build(None, &params, &command_schema()).unwrap();
        assert_eq!(
            payload,
            json!({"argv": ["sh", "-c", "echo hi"], "env": {"GREETING": "42"}, "cwd": "123", "timeout_ms": 5000})
        );
    }

    #[test]
    fn one_of_schemas_and_unknown_keys_are_handled() {
        let csv = json!({"oneOf": [
            {"properties": {"rows": {"type": "integer"}, "operation": {"type": "string"}}},
            {"properties": {"file_id": {"type": "string"}}},
        ]});
        let params = [
            "rows=10".to_owned(),
            "operation=sum".to_owned(),
            "file_id=0193".to_owned(),
        ];
        let payload = build(None, &params, &csv).unwrap();
        assert_eq!(
            payload,
            json!({"rows": 10, "operation": "sum", "file_id": "0193"})
        );
        let echo = build(None, &["x=[1]".to_owned(), "y=hi".to_owned()], &json!({})).unwrap();
        assert_eq!(echo, json!({"x": [1], "y": "hi"}));
    }

    #[test]
    fn a_whole_payload_and_pairs_merge_and_mistakes_are_usage_errors() {
        let merged = build(
            Some(r#"{"n": 1, "seed": 2}"#),
            &["n=5".to_owned()],
            &json!({}),
        )
        .unwrap();
        assert_eq!(merged, json!({"n": 5, "seed": 2}));
        for bad in [
            vec!["nonsense".to_owned()],
            vec!["=1".to_owned()],
            vec!["@/no/such/file".to_owned()],
        ] {
            assert_eq!(
                build(None, &bad, &json!({})).unwrap_err().kind.exit_code(),
                2
            );
        }
        assert!(build(Some("[1]"), &["a=1".to_owned()], &json!({})).is_err());
        assert!(build(Some("{oops"), &[], &json!({})).is_err());
    }
}
