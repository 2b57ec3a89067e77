//! A saga definition as its author writes it: one serde model for YAML and
//! JSON, unknown fields refused, and the digest that identifies its content.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A saga definition document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Saga definition")]
pub struct Document {
    /// The definition's name: `POST /sagas/{name}` starts one.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// A positive version; (name, version) is immutable once registered.
    #[schemars(range(min = 1))]
    pub version: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The participants the steps call, by name; each one's base URL comes
    /// from `PARTICIPANT_<NAME>_URL`.
    #[schemars(inner(pattern(PARTICIPANT_PATTERN)))]
    pub participants: Vec<String>,
    /// The JSON Schema of the saga's input; `default`s are filled in before
    /// it is checked. None: any object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The forward steps, in order.
    #[schemars(length(min = 1))]
    pub steps: Vec<StepDoc>,
    /// The `message` of the saga's webhook events, in a person's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<MessagesDoc>,
}

/// MiniJinja templates of the webhook events' `message`, one per event;
/// an event without one gets a message made of its step names. They see
/// `saga` (`id`, `definition`, `version`), `input`, `failed_step` (the
/// forward step that failed, or none), `undone` (the forward steps that
/// had succeeded and were undone, in their order) and `last_step` (the
/// step attempted last: the stuck compensation, for that event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagesDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_stuck: Option<String>,
}

impl MessagesDoc {
    /// Each template with its field's name.
    pub fn templates(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("succeeded", &self.succeeded),
            ("failed", &self.failed),
            ("compensation_stuck", &self.compensation_stuck),
        ]
        .into_iter()
        .filter_map(|(field, t)| t.as_deref().map(|t| (field, t)))
    }
}

/// One forward step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDoc {
    /// An identifier, so that `steps.<name>.<field>` reads its answer.
    #[schemars(pattern(STEP_PATTERN))]
    pub name: String,
    pub call: CallDoc,
    /// What undoes the step; a step may have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationDoc>,
    /// Time limit of one attempt, such as `2s` or `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDoc>,
    /// Answer statuses that fail the step at once; every other failure is
    /// retried. Default: every 4xx but 408 and 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(range(min = 300, max = 599)))]
    pub business_failure: Option<Vec<u16>>,
}

/// A templated HTTP call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallDoc {
    /// One of the document's `participants`.
    pub participant: String,
    #[serde(default = "post")]
    #[schemars(pattern(METHOD_PATTERN))]
    pub method: String,
    /// The path under the participant's base URL; may hold templates.
    pub path: String,
    /// The JSON body; every string in it may hold templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// A compensation: a named call, retried until it succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensationDoc {
    /// Its step name in the log and the API.
    #[schemars(pattern(STEP_PATTERN))]
    pub name: String,
    /// One of the document's `participants`.
    pub participant: String,
    #[serde(default = "post")]
    #[schemars(pattern(METHOD_PATTERN))]
    pub method: String,
    /// The path under the participant's base URL; may hold templates.
    pub path: String,
    /// The JSON body; every string in it may hold templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Time limit of one attempt, such as `2s` or `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// A step's retry settings, over the orchestrator's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDoc {
    /// Attempts of the forward call, the first included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
}

// The published JSON Schema's patterns: what an editor can check as the
// author types. `validate` is the authority and says more (references,
// templates, URLs), with a path for each error.
const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
const PARTICIPANT_PATTERN: &str = "^[a-z][a-z0-9_]{0,63}$";
const STEP_PATTERN: &str = "^[A-Za-z][A-Za-z0-9_]{0,63}$";
const METHOD_PATTERN: &str = "^(GET|POST|PUT|PATCH|DELETE|get|post|put|patch|delete)$";
const DURATION_PATTERN: &str = "^\\s*[0-9]*\\.?[0-9]+\\s*(ms|s|m)$";

/// The JSON Schema of a document (draft 2020-12), as published in
/// `docs/definition.schema.json` and at `GET /definitions/schema`.
pub fn json_schema() -> Value {
    schemars::schema_for!(Document).to_value()
}

fn post() -> String {
    "POST".into()
}

/// The document's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// The format a `Content-Type` names; anything but JSON is read as
    /// YAML (which JSON is a subset of).
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct)
                if ct
                    .split(';')
                    .next()
                    .is_some_and(|t| t.trim().ends_with("json")) =>
            {
                Format::Json
            }
            _ => Format::Yaml,
        }
    }

    /// The format a file name's extension names.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Why a document could not be read: its syntax or its shape.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
}

impl Document {
    /// Reads a document in `format`.
    pub fn parse(text: &str, format: Format) -> Result<Self, ParseError> {
        match format {
            Format::Json => serde_json::from_str(text).map_err(|err| ParseError {
                message: format!("not a saga definition: {err}"),
            }),
            Format::Yaml => serde_saphyr::from_str(text).map_err(|err| ParseError {
                message: format!("not a saga definition: {err}"),
            }),
        }
    }

    /// The document as canonical JSON (keys sorted, as serde_json orders
    /// them), whatever syntax it was written in.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// `sha256:<hex>` of the canonical JSON: the same content has the same
    /// digest in YAML and in JSON, with any layout or comments.
    pub fn digest(&self) -> String {
        let mut canonical = String::new();
        canonical_json(&self.to_json(), &mut canonical);
        let hash = Sha256::digest(canonical.as_bytes());
        let mut hex = String::with_capacity(7 + 64);
        hex.push_str("sha256:");
        for byte in hash {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex
    }
}

/// `value` as compact JSON with every object's keys sorted, whatever
/// order `serde_json`'s maps keep (a dependency's `preserve_order` feature
/// would otherwise change every digest).
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Every string template of a JSON value, with its path below `path`.
pub fn strings<'a>(value: &'a Value, path: &str, out: &mut BTreeMap<String, &'a str>) {
    match value {
        Value::String(s) => {
            out.insert(path.to_owned(), s);
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                strings(item, &format!("{path}.{key}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "
name: demo
version: 1
participants: [a]
steps:
  - name: One
    call: {participant: a, path: /one, body: {x: '{{ saga.id }}'}}
";

    #[test]
    fn canonical_json_sorts_keys_whatever_the_map_order() {
        let value: Value = serde_json::from_str(r#"{"b":1,"a":{"d":"x\n","c":[3,null]}}"#).unwrap();
        let mut out = String::new();
        canonical_json(&value, &mut out);
        assert_eq!(out, r#"{"a":{"c":[3,null],"d":"x\n"},"b":1}"#);
    }

    #[test]
    fn yaml_and_json_of_the_same_content_have_the_same_digest() {
        let yaml = Document::parse(YAML, Format::Yaml).unwrap();
        let json = Document::parse(&yaml.to_json().to_string(), Format::Json).unwrap();
        assert_eq!(yaml, json);
        assert_eq!(yaml.digest(), json.digest());
        assert_eq!(yaml.steps[0].call.method, "POST");
        assert!(yaml.digest().starts_with("sha256:"));
    }

    /// The schema in the repository is the one the code publishes.
    #[test]
    fn the_published_schema_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/definition.schema.json"
        );
        let published: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(
            published == json_schema(),
            "docs/definition.schema.json is stale: run \
             cargo run -p orchestrator -- schema > docs/definition.schema.json"
        );
    }

    #[test]
    fn the_schema_takes_the_travel_saga_and_refuses_what_the_model_refuses() {
        let schema = jsonschema::validator_for(&json_schema()).unwrap();
        let travel: Value = serde_saphyr::from_str(crate::definition::TRAVEL_YAML).unwrap();
        let errors: Vec<String> = schema.iter_errors(&travel).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");

        for (change, why) in [
            (serde_json::json!({"stpes": []}), "unknown field"),
            (serde_json::json!({"version": 0}), "version below 1"),
            (
                serde_json::json!({"participants": ["Flights"]}),
                "participant name",
            ),
            (serde_json::json!({"steps": []}), "no steps"),
        ] {
            let mut doc = travel.clone();
            for (key, value) in change.as_object().unwrap() {
                doc[key] = value.clone();
            }
            assert!(!schema.is_valid(&doc), "{why}: {doc}");
        }
        let mut doc = travel.clone();
        doc["steps"][0]["timeout"] = "soon".into();
        assert!(!schema.is_valid(&doc), "a timeout that is no duration");
        let mut doc = travel;
        doc["steps"][2]["business_failure"] = serde_json::json!([200]);
        assert!(
            !schema.is_valid(&doc),
            "a success status as a business failure"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Document::parse(&YAML.replace("steps:", "stpes: []\nsteps:"), Format::Yaml)
            .unwrap_err();
        assert!(err.message.contains("stpes"), "{err}");
    }
}
