//! Templates in a definition's paths and bodies, compiled once per
//! definition and rendered for each call.
//!
//! A string that is exactly one `{{ expr }}` yields the expression's typed
//! JSON value; a string mixing text and expressions yields a string; any
//! other JSON value is sent as it is. Expressions are MiniJinja's, in strict
//! mode: a name or field that is not there is an error, never an empty
//! string. The variables are `input`, `saga` (`id`, `definition`,
//! `version`) and `steps` (`steps.<earlier step>` is that step's answer).
//!
//! Most expressions are a plain dotted path (`input.depart_city`,
//! `steps.ReserveFlight.booking_id`). Those are looked up directly in the
//! JSON, without converting the saga's input and answers into MiniJinja
//! values for each call: the call's body is built on every attempt, on the
//! saga's hot path.

use std::borrow::Cow;
use std::sync::LazyLock;

use minijinja::value::Serde;
use serde::Serialize;
use serde_json::{Map, Value};

/// The one MiniJinja environment: strict, and with no templates of its own,
/// so expressions compiled in it may live as long as the process.
static ENV: LazyLock<minijinja::Environment<'static>> = LazyLock::new(|| {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
});

/// The variables a definition's message template can read.
pub const MESSAGE_VARIABLES: [&str; 5] = ["saga", "input", "failed_step", "undone", "last_step"];

/// Why a message template is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum MessageError {
    /// It does not compile.
    Syntax(String),
    /// It reads a variable that is not one of [`MESSAGE_VARIABLES`].
    Unknown(String),
}

/// Checks that a definition's message template (a whole MiniJinja
/// template, not one expression) compiles and reads only the variables
/// it will be given: strict mode would otherwise fail it at every event.
pub fn check_message(source: &str) -> Result<(), MessageError> {
    let template = ENV
        .template_from_str(source)
        .map_err(|err| MessageError::Syntax(err.to_string()))?;
    let unknown = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !MESSAGE_VARIABLES.contains(&name.as_str()))
        .filter(|name| !ENV.globals().any(|(global, _)| global == name))
        .min();
    match unknown {
        None => Ok(()),
        Some(name) => Err(MessageError::Unknown(format!(
            "the message reads {name}; messages can read {}",
            MESSAGE_VARIABLES.join(", ")
        ))),
    }
}

/// A definition's message templates, compiled once, by their field's name
/// (`succeeded`, `failed`, `compensation_stuck`).
#[derive(Debug)]
pub struct Messages(minijinja::Environment<'static>);

impl Messages {
    /// Compiles `templates`, each checked by [`check_message`] before.
    pub fn compile<'a>(
        templates: impl Iterator<Item = (&'static str, &'a str)>,
    ) -> Result<Self, minijinja::Error> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, source) in templates {
            env.add_template_owned(name, source.to_owned())?;
        }
        Ok(Self(env))
    }

    /// The message `name`, if the definition has one.
    pub fn get(&self, name: &str) -> Option<minijinja::Template<'_, '_>> {
        self.0.get_template(name).ok()
    }
}

/// What a template can see while a saga runs.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub input: &'a Value,
    pub saga_id: &'a str,
    pub definition: &'a str,
    pub version: i32,
    /// The answers of the forward steps that have succeeded, by name.
    pub steps: &'a Map<String, Value>,
}

/// A compiled template: the shape of the JSON value it renders.
#[derive(Debug)]
pub enum Template {
    /// Sent as written.
    Literal(Value),
    /// A string that is exactly one expression: its value, typed.
    Whole(Expr),
    /// A string mixing text and expressions.
    Text(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// A piece of a mixed string.
#[derive(Debug)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

/// One `{{ expr }}`.
#[derive(Debug)]
pub struct Expr {
    /// The expression as written, for messages.
    pub source: String,
    kind: ExprKind,
}

#[derive(Debug)]
enum ExprKind {
    /// A dotted path from one of the variables.
    Path(Vec<String>),
    Jinja(minijinja::Expression<'static, 'static>),
}

/// A template that does not compile.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    pub message: String,
}

/// A template that could not be rendered for this saga (a field an answer
/// lacks): the step fails, with this message naming the template.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template {{{{ {template} }}}}: {message}")]
pub struct RenderError {
    pub template: String,
    pub message: String,
}

impl Template {
    /// Compiles every string in `value`.
    pub fn compile(value: &Value) -> Result<Self, CompileError> {
        Ok(match value {
            Value::String(s) => Self::compile_str(s)?,
            Value::Array(items) => {
                Template::Array(items.iter().map(Self::compile).collect::<Result<_, _>>()?)
            }
            Value::Object(map) => Template::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::compile(v)?)))
                    .collect::<Result<_, _>>()?,
            ),
            other => Template::Literal(other.clone()),
        })
    }

    /// Compiles one string.
    pub fn compile_str(s: &str) -> Result<Self, CompileError> {
        let mut parts = split(s)?;
        if parts.is_empty() {
            return Ok(Template::Literal(Value::String(String::new())));
        }
        if parts.len() == 1 {
            return Ok(match parts.remove(0) {
                Part::Text(text) => Template::Literal(Value::String(text)),
                Part::Expr(expr) => Template::Whole(expr),
            });
        }
        Ok(Template::Text(parts))
    }

    /// Every expression in the template, in order.
    pub fn exprs(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Expr>) {
        match self {
            Template::Literal(_) => {}
            Template::Whole(expr) => out.push(expr),
            Template::Text(parts) => out.extend(parts.iter().filter_map(|p| match p {
                Part::Expr(e) => Some(e),
                Part::Text(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect(out)),
            Template::Object(fields) => fields.iter().for_each(|(_, t)| t.collect(out)),
        }
    }

    /// The JSON value for this saga.
    pub fn render(&self, scope: &Scope<'_>) -> Result<Value, RenderError> {
        Ok(match self {
            Template::Literal(value) => value.clone(),
            Template::Whole(expr) => expr.eval(scope)?.into_owned(),
            Template::Text(parts) => {
                Value::String(render_text(parts, scope, |s, out| out.push_str(s))?)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.render(scope))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Object(fields) => {
                let mut map = Map::new();
                for (key, template) in fields {
                    map.insert(key.clone(), template.render(scope)?);
                }
                Value::Object(map)
            }
        })
    }

    /// The template as a URL path: each expression's text is escaped as one
    /// path segment, so that a value cannot reach another resource.
    pub fn render_path(&self, scope: &Scope<'_>) -> Result<String, RenderError> {
        match self {
            Template::Literal(Value::String(s)) => Ok(s.clone()),
            Template::Whole(expr) => {
                let mut out = String::new();
                escape_segment(&text_of(expr.eval(scope)?.as_ref()), &mut out);
                Ok(out)
            }
            Template::Text(parts) => render_text(parts, scope, escape_segment),
            _ => Ok(String::new()),
        }
    }
}

fn render_text(
    parts: &[Part],
    scope: &Scope<'_>,
    push_value: impl Fn(&str, &mut String),
) -> Result<String, RenderError> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Expr(expr) => push_value(&text_of(expr.eval(scope)?.as_ref()), &mut out),
        }
    }
    Ok(out)
}

/// A value as it reads inside a string: a string as itself, anything else
/// as JSON.
fn text_of(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

/// Appends `s` percent-encoded as one path segment (RFC 3986 `pchar`).
fn escape_segment(s: &str, out: &mut String) {
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// Splits a string into text and `{{ expr }}` parts, compiling each
/// expression.
fn split(s: &str) -> Result<Vec<Part>, CompileError> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| CompileError {
            message: format!("{s:?} opens {{{{ without closing it with }}}}"),
        })?;
        parts.push(Part::Expr(Expr::compile(after[..close].trim())?));
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return Err(CompileError {
            message: format!("{s:?} closes }}}} without opening it with {{{{"),
        });
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The variables MiniJinja expressions may use.
#[derive(Serialize)]
struct Context<'a> {
    input: &'a Value,
    saga: SagaContext<'a>,
    steps: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct SagaContext<'a> {
    id: &'a str,
    definition: &'a str,
    version: i32,
}

impl Expr {
    fn compile(source: &str) -> Result<Self, CompileError> {
        if source.is_empty() {
            return Err(CompileError {
                message: "{{ }} holds no expression".into(),
            });
        }
        let segments: Vec<&str> = source.split('.').collect();
        let kind = if segments.iter().all(|s| is_ident(s)) {
            ExprKind::Path(segments.into_iter().map(str::to_owned).collect())
        } else {
            let compiled = ENV
                .compile_expression_owned(source.to_owned())
                .map_err(|err| CompileError {
                    message: format!("{{{{ {source} }}}} does not compile: {err}"),
                })?;
            ExprKind::Jinja(compiled)
        };
        Ok(Self {
            source: source.to_owned(),
            kind,
        })
    }

    /// The variables the expression reads, each as its dotted path
    /// (`steps.ReserveFlight.booking_id`), for the checks a definition gets
    /// before it is accepted.
    pub fn references(&self) -> Vec<Vec<String>> {
        match &self.kind {
            ExprKind::Path(path) => vec![path.clone()],
            ExprKind::Jinja(expr) => {
                let mut refs: Vec<Vec<String>> = expr
                    .undeclared_variables(true)
                    .into_iter()
                    .map(|v| v.split('.').map(str::to_owned).collect())
                    .collect();
                refs.sort();
                refs
            }
        }
    }

    fn error(&self, message: impl Into<String>) -> RenderError {
        RenderError {
            template: self.source.clone(),
            message: message.into(),
        }
    }

    /// The expression's value for this saga.
    pub fn eval<'s>(&self, scope: &Scope<'s>) -> Result<Cow<'s, Value>, RenderError> {
        match &self.kind {
            ExprKind::Path(path) => self.lookup(path, scope),
            ExprKind::Jinja(expr) => {
                let context = Context {
                    input: scope.input,
                    saga: SagaContext {
                        id: scope.saga_id,
                        definition: scope.definition,
                        version: scope.version,
                    },
                    steps: scope.steps,
                };
                let value = expr
                    .eval(minijinja::Value::from(Serde(&context)))
                    .map_err(|err| self.error(err.to_string()))?;
                if value.is_undefined() {
                    return Err(self.error("the expression is undefined"));
                }
                serde_json::to_value(&value)
                    .map(Cow::Owned)
                    .map_err(|err| self.error(err.to_string()))
            }
        }
    }

    fn lookup<'s>(
        &self,
        path: &[String],
        scope: &Scope<'s>,
    ) -> Result<Cow<'s, Value>, RenderError> {
        let (root, rest) = path.split_first().ok_or_else(|| self.error("empty"))?;
        let (mut value, mut at, rest): (&'s Value, String, &[String]) = match root.as_str() {
            "input" => (scope.input, "input".into(), rest),
            "steps" => {
                let (step, rest) = rest
                    .split_first()
                    .ok_or_else(|| self.error("name a step: steps.<step>.<field>"))?;
                let answer = scope
                    .steps
                    .get(step)
                    .ok_or_else(|| self.error(format!("step {step} has no answer")))?;
                (answer, format!("steps.{step}"), rest)
            }
            "saga" => {
                return match rest {
                    [field] if field == "id" => Ok(Cow::Owned(Value::from(scope.saga_id))),
                    [field] if field == "definition" => {
                        Ok(Cow::Owned(Value::from(scope.definition)))
                    }
                    [field] if field == "version" => Ok(Cow::Owned(Value::from(scope.version))),
                    _ => Err(self.error("saga has id, definition and version")),
                };
            }
            other => return Err(self.error(format!("unknown variable {other}"))),
        };
        for field in rest {
            value = value
                .get(field)
                .ok_or_else(|| self.error(format!("{at} has no field {field}")))?;
            at.push('.');
            at.push_str(field);
        }
        Ok(Cow::Borrowed(value))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(template: &Value, input: &Value, steps: &Value) -> Result<Value, RenderError> {
        let Value::Object(steps) = steps else {
            panic!("steps is an object")
        };
        let scope = Scope {
            input,
            saga_id: "s-1",
            definition: "demo",
            version: 2,
            steps,
        };
        Template::compile(template).unwrap().render(&scope)
    }

    #[test]
    fn a_whole_expression_keeps_its_type_and_mixed_text_is_a_string() {
        let template = json!({
            "n": "{{ input.n }}",
            "id": "{{ saga.id }}",
            "v": "{{saga.version}}",
            "label": "order {{ saga.id }} of {{ input.n }}",
            "sum": "{{ input.n + 1 }}",
            "up": "{{ input.name | upper }}",
            "fixed": [1, true, "plain"],
            "booking": "{{ steps.Reserve.booking_id }}",
        });
        let out = render(
            &template,
            &json!({"n": 41, "name": "ada"}),
            &json!({"Reserve": {"booking_id": "b-7"}}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "n": 41, "id": "s-1", "v": 2, "label": "order s-1 of 41", "sum": 42,
                "up": "ADA", "fixed": [1, true, "plain"], "booking": "b-7",
            })
        );
    }

    #[test]
    fn a_missing_field_names_the_template_and_the_field() {
        let err = render(
            &json!({"b": "{{ steps.Reserve.booking_id }}"}),
            &json!({}),
            &json!({"Reserve": {"id": 1}}),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "template {{ steps.Reserve.booking_id }}: steps.Reserve has no field booking_id"
        );
        let err = render(&json!("{{ input.n + 1 }}"), &json!({}), &json!({})).unwrap_err();
        assert!(
            err.to_string().starts_with("template {{ input.n + 1 }}:"),
            "{err}"
        );
    }

    #[test]
    fn path_values_are_escaped_as_one_segment() {
        let template = Template::compile_str("/orders/{{ input.id }}/cancel").unwrap();
        let input = json!({"id": "a/../b c"});
        let steps = Map::new();
        let scope = Scope {
            input: &input,
            saga_id: "s",
            definition: "d",
            version: 1,
            steps: &steps,
        };
        assert_eq!(
            template.render_path(&scope).unwrap(),
            "/orders/a%2F..%2Fb%20c/cancel"
        );
    }

    #[test]
    fn templates_that_do_not_compile_are_refused() {
        for bad in ["{{ input.", "{{ }}", "a }} b", "{{ input.x + }}"] {
            assert!(Template::compile_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_read_only_their_variables() {
        let ok = "{% set n = undone | length %}{% for s in undone %}{{ loop.index }} {{ s }}\
                  {% endfor %}{{ saga.id }} {{ input.x }} {{ failed_step }} {{ last_step }} \
                  {{ range(n) | list }}";
        assert_eq!(check_message(ok), Ok(()));
        let Err(MessageError::Unknown(message)) = check_message("{{ saga.id }} {{ trip.id }}")
        else {
            panic!("trip is not a message variable");
        };
        assert!(message.contains("reads trip"), "{message}");
        assert!(matches!(
            check_message("{% if %}"),
            Err(MessageError::Syntax(_))
        ));
    }

    #[test]
    fn references_are_dotted_paths() {
        let t = Template::compile_str("{{ steps.A.id ~ input.x }}").unwrap();
        let refs = t.exprs()[0].references();
        assert!(
            refs.contains(&vec!["steps".into(), "A".into(), "id".into()]),
            "{refs:?}"
        );
        assert!(refs.contains(&vec!["input".into(), "x".into()]), "{refs:?}");
    }
}
