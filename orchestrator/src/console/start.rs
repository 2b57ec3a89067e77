//! `/ui/start`: a form that starts a saga of a chosen definition through
//! the public API (`POST /sagas/{definition}`), its fields made from the
//! definition's input schema and prefilled with its defaults, then opens
//! the saga's page.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{ErrorPage, PageResult, failed, render};
use crate::AppState;
use crate::store;

/// One input field: a top-level property of the input schema.
#[derive(Debug)]
pub struct Field {
    pub name: String,
    /// `select` (an `enum`), `number` (an integer or a number) or `text`.
    pub kind: &'static str,
    pub options: Vec<String>,
    pub default: String,
    pub required: bool,
}

#[derive(Template)]
#[template(path = "start.html")]
struct StartPage {
    definitions: Vec<String>,
    definition: String,
    version: i32,
    fields: Vec<Field>,
}

#[derive(Debug, Deserialize)]
pub(super) struct StartQuery {
    definition: Option<String>,
}

pub(super) async fn start(
    State(state): State<AppState>,
    Query(query): Query<StartQuery>,
) -> PageResult {
    let rows = state
        .engine
        .bounded(async |conn| store::definitions::list(conn, None).await)
        .await
        .map_err(|err| failed(err.into()))?;
    let mut definitions: Vec<String> = rows.into_iter().map(|(name, ..)| name).collect();
    definitions.dedup();
    let Some(name) = query
        .definition
        .filter(|d| !d.is_empty())
        .or_else(|| definitions.first().cloned())
    else {
        return Err(ErrorPage::new(
            StatusCode::NOT_FOUND,
            "no definition is registered: PUT /definitions/{name} registers one".into(),
        ));
    };
    let definition = state
        .engine
        .definition(&name, None)
        .await
        .map_err(|err| failed(err.into()))?
        .ok_or_else(|| ErrorPage::new(StatusCode::NOT_FOUND, format!("no definition {name:?}")))?;
    render(&StartPage {
        fields: fields(definition.document.input.as_ref()),
        version: definition.version,
        definition: name,
        definitions,
    })
}

/// The fields of an input schema's top-level properties: the required ones
/// first (in the order `required` lists them), then the choices, then the
/// rest by name. (The document's own order is not kept: it is stored as
/// `jsonb`, which sorts its keys.)
pub fn fields(schema: Option<&Value>) -> Vec<Field> {
    let Some(schema) = schema else {
        return Vec::new();
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return Vec::new();
    };
    let mut fields: Vec<Field> = properties
        .iter()
        .map(|(name, property)| {
            let options: Vec<String> = property["enum"]
                .as_array()
                .map(|values| values.iter().map(text).collect())
                .unwrap_or_default();
            let kind = match property["type"].as_str() {
                _ if !options.is_empty() => "select",
                Some("integer" | "number") => "number",
                _ => "text",
            };
            Field {
                name: name.clone(),
                kind,
                options,
                default: property.get("default").map(text).unwrap_or_default(),
                required: required.contains(&name.as_str()),
            }
        })
        .collect();
    // Sorting is stable: within each rank the fields stay sorted by name.
    fields.sort_by_key(|f| {
        let position = required.iter().position(|r| *r == f.name);
        (position.unwrap_or(usize::MAX), f.kind != "select")
    });
    fields
}

/// A JSON value as a form shows it.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::travel;

    #[test]
    fn the_travel_input_becomes_fields_with_its_defaults() {
        let fields = fields(travel().document.input.as_ref());
        let run_type = fields.iter().find(|f| f.name == "run_type").unwrap();
        assert_eq!(
            (run_type.kind, run_type.default.as_str()),
            ("select", "success")
        );
        assert_eq!(run_type.options.len(), 6);
        assert!(run_type.options.contains(&"failPayment".to_owned()));
        let city = fields.iter().find(|f| f.name == "depart_city").unwrap();
        assert_eq!((city.kind, city.default.as_str()), ("text", "Detroit"));
        let deadline = fields.iter().find(|f| f.name == "deadline_secs").unwrap();
        assert_eq!((deadline.kind, deadline.default.as_str()), ("number", ""));
        // The choice first, then the rest by name.
        let names: Vec<&str> = fields.iter().take(3).map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["run_type", "amount", "arrive_city"]);
    }

    #[test]
    fn required_fields_come_first_in_their_order() {
        let schema = serde_json::json!({
            "properties": {"a": {}, "b": {"enum": [1, 2]}, "c": {}, "d": {}},
            "required": ["d", "c"],
        });
        let names: Vec<String> = fields(Some(&schema)).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["d", "c", "b", "a"]);
    }
}
