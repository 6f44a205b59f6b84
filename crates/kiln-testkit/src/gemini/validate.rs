//! Checks a `generateContent` body the way the real service does, before a scripted reply is
//! taken. The real front end maps JSON onto protocol buffers, which explains its rules: field
//! names are accepted in both lowerCamelCase and snake_case, a JSON `null` means "not set",
//! an unknown name is an error, and error messages name fields in snake_case.

use serde_json::{Map, Value, json};

use super::{Refusal, bad_request, google_error};

/// What the token counts are derived from.
pub(super) struct Checked {
    pub(super) text_chars: usize,
    pub(super) media_parts: usize,
}

/// A field's two accepted spellings: (lowerCamelCase, snake_case).
type Name = (&'static str, &'static str);

const REQUEST_FIELDS: &[Name] = &[
    ("contents", "contents"),
    ("systemInstruction", "system_instruction"),
    ("generationConfig", "generation_config"),
    ("safetySettings", "safety_settings"),
    ("tools", "tools"),
    ("toolConfig", "tool_config"),
    ("cachedContent", "cached_content"),
];
const CONTENT_FIELDS: &[Name] = &[("role", "role"), ("parts", "parts")];
const TEXT: Name = ("text", "text");
const INLINE_DATA: Name = ("inlineData", "inline_data");
const FILE_DATA: Name = ("fileData", "file_data");
const MIME_TYPE: Name = ("mimeType", "mime_type");
const FILE_URI: Name = ("fileUri", "file_uri");
const RESPONSE_MIME_TYPE: Name = ("responseMimeType", "response_mime_type");
const RESPONSE_SCHEMA: Name = ("responseSchema", "response_schema");
const RESPONSE_JSON_SCHEMA: Name = ("responseJsonSchema", "response_json_schema");

/// The generation settings the fake knows, each with the JSON kind it must have. Beyond the
/// ones Kiln uses, it takes a few other real ones (thinking, penalties...) so that a client
/// tuning them is not refused where the real service would accept it.
const CONFIG_FIELDS: &[(Name, Kind)] = &[
    (RESPONSE_MIME_TYPE, Kind::String),
    (RESPONSE_SCHEMA, Kind::Object),
    (RESPONSE_JSON_SCHEMA, Kind::Any),
    (("temperature", "temperature"), Kind::Number),
    (("topP", "top_p"), Kind::Number),
    (("topK", "top_k"), Kind::Number),
    (("candidateCount", "candidate_count"), Kind::Number),
    (("maxOutputTokens", "max_output_tokens"), Kind::Number),
    (("stopSequences", "stop_sequences"), Kind::Strings),
    (("seed", "seed"), Kind::Number),
    (("presencePenalty", "presence_penalty"), Kind::Number),
    (("frequencyPenalty", "frequency_penalty"), Kind::Number),
    (("responseLogprobs", "response_logprobs"), Kind::Bool),
    (("logprobs", "logprobs"), Kind::Number),
    (("responseModalities", "response_modalities"), Kind::Strings),
    (("mediaResolution", "media_resolution"), Kind::String),
    (("thinkingConfig", "thinking_config"), Kind::Object),
];

/// The response types the real service can produce.
const RESPONSE_MIME_TYPES: &[&str] = &[
    "text/plain",
    "application/json",
    "application/xml",
    "application/yaml",
    "text/x.enum",
];

#[derive(Clone, Copy)]
enum Kind {
    String,
    Number,
    Bool,
    Object,
    Strings,
    Any,
}

impl Kind {
    fn accepts(self, value: &Value) -> bool {
        match self {
            // Protocol-buffer JSON also takes numbers written as strings.
            Kind::Number => {
                value.is_number() || value.as_str().is_some_and(|s| s.parse::<f64>().is_ok())
            }
            Kind::String => value.is_string(),
            Kind::Bool => value.is_boolean(),
            Kind::Object => value.is_object(),
            Kind::Strings => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
            Kind::Any => true,
        }
    }
}

/// Validates a `generateContent` body; `file_exists` says whether a `fileUri` names an
/// uploaded file.
pub(super) fn generate_request(
    body: &[u8],
    file_exists: &dyn Fn(&str) -> bool,
) -> Result<Checked, Refusal> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(&format!("Invalid JSON payload received. {e}")))?;
    let request = object(&value, "", "GenerateContentRequest")?;
    known_names(request, REQUEST_FIELDS, "")?;
    let mut checked = Checked {
        text_chars: 0,
        media_parts: 0,
    };
    let contents = match field(request, ("contents", "contents")) {
        None => None,
        Some(Value::Array(items)) => Some(items).filter(|items| !items.is_empty()),
        Some(other) => return Err(invalid_value("contents", "a list of Content", other)),
    };
    let Some(contents) = contents else {
        return Err(bad_request(
            "* GenerateContentRequest.contents: contents is not specified\n",
        ));
    };
    for (i, content) in contents.iter().enumerate() {
        let at = format!("contents[{i}]");
        check_content(content, &at, true, file_exists, &mut checked)?;
    }
    if let Some(system) = field(request, ("systemInstruction", "system_instruction")) {
        check_content(
            system,
            "system_instruction",
            false,
            file_exists,
            &mut checked,
        )?;
    }
    if let Some(config) = field(request, ("generationConfig", "generation_config")) {
        check_config(config)?;
    }
    Ok(checked)
}

fn check_content(
    value: &Value,
    at: &str,
    check_role: bool,
    file_exists: &dyn Fn(&str) -> bool,
    checked: &mut Checked,
) -> Result<(), Refusal> {
    let content = object(value, at, "Content")?;
    known_names(content, CONTENT_FIELDS, at)?;
    if check_role
        && let Some(role) = field(content, ("role", "role"))
        && !matches!(role.as_str(), Some("user" | "model"))
    {
        return Err(bad_request("Please use a valid role: user, model."));
    }
    let parts = match field(content, ("parts", "parts")) {
        None => &[][..],
        Some(Value::Array(parts)) => parts.as_slice(),
        Some(other) => {
            return Err(invalid_value(
                &format!("{at}.parts"),
                "a list of Part",
                other,
            ));
        }
    };
    if parts.is_empty() {
        let message =
            format!("* GenerateContentRequest.{at}.parts: contents.parts must not be empty.\n");
        return Err(bad_request(&message));
    }
    for (j, part) in parts.iter().enumerate() {
        check_part(part, &format!("{at}.parts[{j}]"), file_exists, checked)?;
    }
    Ok(())
}

/// A part must hold exactly one kind of data: `text`, `inlineData` or `fileData`.
fn check_part(
    value: &Value,
    at: &str,
    file_exists: &dyn Fn(&str) -> bool,
    checked: &mut Checked,
) -> Result<(), Refusal> {
    let part = object(value, at, "Part")?;
    known_names(part, &[TEXT, INLINE_DATA, FILE_DATA], at)?;
    let set: Vec<&str> = [TEXT, INLINE_DATA, FILE_DATA]
        .into_iter()
        .filter(|name| field(part, *name).is_some())
        .map(|(_, snake)| snake)
        .collect();
    match set.as_slice() {
        [] => {
            let message = format!(
                "* GenerateContentRequest.{at}.data: required oneof field 'data' must have one initialized field\n"
            );
            Err(bad_request(&message))
        }
        ["text"] => match field(part, TEXT).and_then(Value::as_str) {
            Some(text) => {
                checked.text_chars += text.chars().count();
                Ok(())
            }
            None => Err(invalid_value(
                &format!("{at}.text"),
                "TYPE_STRING",
                &part[TEXT.0],
            )),
        },
        ["inline_data"] => {
            checked.media_parts += 1;
            let at = format!("{at}.inline_data");
            let blob = field(part, INLINE_DATA).unwrap_or(&Value::Null);
            check_blob(blob, &at)
        }
        [_file_data] => {
            checked.media_parts += 1;
            let at = format!("{at}.file_data");
            let file = field(part, FILE_DATA).unwrap_or(&Value::Null);
            check_file_data(file, &at, file_exists)
        }
        [first, second, ..] => {
            let message = format!(
                "Invalid JSON payload received. Oneof field 'data' is already set \
                 (as '{first}'). Cannot set '{second}' at '{at}'."
            );
            Err(bad_request(&message))
        }
    }
}

/// `inlineData`: a MIME type and base64 bytes, both required.
fn check_blob(value: &Value, at: &str) -> Result<(), Refusal> {
    let blob = object(value, at, "Blob")?;
    known_names(blob, &[MIME_TYPE, ("data", "data")], at)?;
    match field(blob, MIME_TYPE) {
        Some(Value::String(mime)) if !mime.is_empty() => {}
        Some(other) if !other.is_string() => {
            return Err(invalid_value(
                &format!("{at}.mime_type"),
                "TYPE_STRING",
                other,
            ));
        }
        _ => {
            let message =
                format!("* GenerateContentRequest.{at}.mime_type: mime_type is not specified\n");
            return Err(bad_request(&message));
        }
    }
    let data = match field(blob, ("data", "data")) {
        Some(Value::String(data)) if !data.is_empty() => data,
        Some(other) if !other.is_string() => {
            return Err(invalid_value(&format!("{at}.data"), "TYPE_BYTES", other));
        }
        _ => {
            let message = format!("* GenerateContentRequest.{at}.data: data is not specified\n");
            return Err(bad_request(&message));
        }
    };
    if decode_base64(data).is_none() {
        let shown: String = data.chars().take(40).collect();
        let message = format!(
            "Invalid value at '{at}.data' (TYPE_BYTES), Base64 decoding failed for \"{shown}\""
        );
        return Err(bad_request(&message));
    }
    Ok(())
}

/// `fileData`: a `fileUri` naming an uploaded file (the MIME type is optional here, unlike
/// on Vertex AI).
fn check_file_data(
    value: &Value,
    at: &str,
    file_exists: &dyn Fn(&str) -> bool,
) -> Result<(), Refusal> {
    let file = object(value, at, "FileData")?;
    known_names(file, &[MIME_TYPE, FILE_URI], at)?;
    if let Some(mime) = field(file, MIME_TYPE)
        && !mime.is_string()
    {
        return Err(invalid_value(
            &format!("{at}.mime_type"),
            "TYPE_STRING",
            mime,
        ));
    }
    let uri = match field(file, FILE_URI) {
        Some(Value::String(uri)) if !uri.is_empty() => uri,
        Some(other) if !other.is_string() => {
            return Err(invalid_value(
                &format!("{at}.file_uri"),
                "TYPE_STRING",
                other,
            ));
        }
        _ => {
            let message =
                format!("* GenerateContentRequest.{at}.file_uri: file_uri is not specified\n");
            return Err(bad_request(&message));
        }
    };
    if !file_exists(uri) {
        let id = uri.rsplit('/').next().unwrap_or(uri);
        return Err(file_denied(id));
    }
    Ok(())
}

fn check_config(value: &Value) -> Result<(), Refusal> {
    let at = "generation_config";
    let config = object(value, at, "GenerationConfig")?;
    let names: Vec<Name> = CONFIG_FIELDS.iter().map(|(name, _)| *name).collect();
    known_names(config, &names, at)?;
    for ((camel, snake), kind) in CONFIG_FIELDS {
        if let Some(value) = field(config, (camel, snake))
            && !kind.accepts(value)
        {
            let expected = match kind {
                Kind::String => "TYPE_STRING",
                Kind::Number => "a number",
                Kind::Bool => "TYPE_BOOL",
                Kind::Object => "an object",
                Kind::Strings => "a list of strings",
                Kind::Any => "a value",
            };
            return Err(invalid_value(&format!("{at}.{snake}"), expected, value));
        }
    }
    let mime = field(config, RESPONSE_MIME_TYPE).and_then(Value::as_str);
    if let Some(mime) = mime
        && !RESPONSE_MIME_TYPES.contains(&mime)
    {
        let message = format!(
            "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are \
             {}; got `{mime}`.\n",
            RESPONSE_MIME_TYPES.join(", ")
        );
        return Err(bad_request(&message));
    }
    let schema = field(config, RESPONSE_SCHEMA).is_some();
    let json_schema = field(config, RESPONSE_JSON_SCHEMA).is_some();
    if schema && json_schema {
        return Err(bad_request(
            "* GenerateContentRequest.generation_config: response_schema and \
             response_json_schema cannot both be set.\n",
        ));
    }
    // A schema only constrains JSON output (or, for response_schema, an enum), so the real
    // service refuses one without the matching response type.
    let allowed = match (schema, json_schema) {
        (true, _) => matches!(mime, Some("application/json" | "text/x.enum")),
        (_, true) => mime == Some("application/json"),
        _ => true,
    };
    if !allowed {
        let which = if schema {
            "response_schema"
        } else {
            "response_json_schema"
        };
        let message = format!(
            "* GenerateContentRequest.generation_config.{which}: response_mime_type must be \
             application/json when {which} is set (got {}).\n",
            mime.unwrap_or("none")
        );
        return Err(bad_request(&message));
    }
    Ok(())
}

/// A field by either spelling; `null` counts as absent.
fn field(obj: &Map<String, Value>, (camel, snake): Name) -> Option<&Value> {
    [camel, snake]
        .into_iter()
        .filter_map(|name| obj.get(name))
        .find(|value| !value.is_null())
}

fn object<'a>(
    value: &'a Value,
    at: &str,
    message: &str,
) -> Result<&'a Map<String, Value>, Refusal> {
    value.as_object().ok_or_else(|| {
        let at = if at.is_empty() { "(root)" } else { at };
        invalid_value(
            at,
            &format!("type.googleapis.com/google.ai.generativelanguage.v1beta.{message}"),
            value,
        )
    })
}

/// Refuses the first set field whose name is in neither spelling of `known`.
fn known_names(obj: &Map<String, Value>, known: &[Name], at: &str) -> Result<(), Refusal> {
    let unknown = obj
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, _)| name)
        .find(|name| {
            !known
                .iter()
                .any(|(camel, snake)| name == camel || name == snake)
        });
    let Some(name) = unknown else { return Ok(()) };
    let description = if at.is_empty() {
        format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.")
    } else {
        format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
        )
    };
    let mut violation = json!({ "description": description });
    if !at.is_empty() {
        violation["field"] = json!(at);
    }
    let details = json!([{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [violation]
    }]);
    Err(google_error(
        400,
        "INVALID_ARGUMENT",
        &description,
        Some(details),
    ))
}

fn invalid_value(at: &str, expected: &str, value: &Value) -> Refusal {
    let shown: String = value.to_string().chars().take(60).collect();
    bad_request(&format!("Invalid value at '{at}' ({expected}), {shown}"))
}

/// The real service's answer for a `fileUri` that names no file of this key's project.
pub(super) fn file_denied(id: &str) -> Refusal {
    let message =
        format!("You do not have permission to access the File {id} or it may not exist.");
    google_error(403, "PERMISSION_DENIED", &message, None)
}

/// Decodes base64 the way protocol-buffer JSON does: the standard or the URL-safe alphabet,
/// with or without padding. Anything else (spaces, stray characters, a length no encoder
/// produces) fails.
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let padded = text.len() - text.trim_end_matches('=').len();
    let data = &text.as_bytes()[..text.len() - padded];
    if padded > 2 || (padded > 0 && !text.len().is_multiple_of(4)) || data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for &c in data {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}
