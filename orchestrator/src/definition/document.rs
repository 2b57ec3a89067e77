//! A saga definition as its author writes it: one serde model for YAML and
//! JSON, unknown fields refused, and the digest that identifies its content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A saga definition document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The definition's name: `POST /sagas/{name}` starts one.
    pub name: String,
    /// A positive version; (name, version) is immutable once registered.
    pub version: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The participants the steps call, by name; each one's base URL comes
    /// from `PARTICIPANT_<NAME>_URL`.
    pub participants: Vec<String>,
    /// The JSON Schema of the saga's input; `default`s are filled in before
    /// it is checked. None: any object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The forward steps, in order.
    pub steps: Vec<StepDoc>,
}

/// One forward step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDoc {
    pub name: String,
    pub call: CallDoc,
    /// What undoes the step; a step may have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationDoc>,
    /// Time limit of one attempt, such as `2s` or `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDoc>,
    /// Answer statuses that fail the step at once; every other failure is
    /// retried. Default: every 4xx but 408 and 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_failure: Option<Vec<u16>>,
}

/// A templated HTTP call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallDoc {
    pub participant: String,
    #[serde(default = "post")]
    pub method: String,
    /// The path under the participant's base URL; may hold templates.
    pub path: String,
    /// The JSON body; every string in it may hold templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// A compensation: a named call, retried until it succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensationDoc {
    pub name: String,
    pub participant: String,
    #[serde(default = "post")]
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A step's retry settings, over the orchestrator's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDoc {
    /// Attempts of the forward call, the first included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
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
        let canonical = self.to_json().to_string();
        let hash = Sha256::digest(canonical.as_bytes());
        let mut hex = String::with_capacity(7 + 64);
        hex.push_str("sha256:");
        for byte in hash {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex
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
    fn yaml_and_json_of_the_same_content_have_the_same_digest() {
        let yaml = Document::parse(YAML, Format::Yaml).unwrap();
        let json = Document::parse(&yaml.to_json().to_string(), Format::Json).unwrap();
        assert_eq!(yaml, json);
        assert_eq!(yaml.digest(), json.digest());
        assert_eq!(yaml.steps[0].call.method, "POST");
        assert!(yaml.digest().starts_with("sha256:"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Document::parse(&YAML.replace("steps:", "stpes: []\nsteps:"), Format::Yaml)
            .unwrap_err();
        assert!(err.message.contains("stpes"), "{err}");
    }
}
