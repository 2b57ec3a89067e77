//! Every check a definition passes before it is accepted (at start-up, at
//! `PUT /definitions/{name}`, at `POST /definitions/validate` and in
//! `orchestrator validate`): whatever can be known from the document fails
//! here, never while a saga runs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::document::{Document, MessagesDoc, strings};
use super::template::{self, Expr, Template};
use super::{Action, Definition, InputSchema, StepDef};

/// How bad a diagnostic is: an error refuses the definition, a warning
/// does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable code such as `unknown_step`.
    pub code: &'static str,
    /// Where, such as `steps[2].call.body.amount`; empty for the whole
    /// document.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error(code: &'static str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            path: path.into(),
            message: message.into(),
        }
    }

    fn warning(code: &'static str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, path, message)
        }
    }
}

/// What the checks know beyond the document: the orchestrator's settings.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// The participants with a base URL configured; None skips the check
    /// (`orchestrator validate` outside a deployment).
    pub configured: Option<BTreeSet<String>>,
    /// The longest attempt timeout the lease allows; None skips the check.
    pub max_timeout: Option<Duration>,
}

/// A document checked: the definition if it has no error, and every finding.
#[derive(Debug)]
pub struct Compiled {
    pub definition: Option<Definition>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    pub fn is_valid(&self) -> bool {
        self.definition.is_some()
    }
}

/// The longest definition or participant name.
const NAME_MAX_LEN: usize = 64;

/// Checks `doc` and compiles it.
pub fn compile(doc: Document, checks: &Checks) -> Compiled {
    let mut out = Vec::new();
    check_names(&doc, &mut out);
    let input = check_input(&doc, &mut out);
    let declared = declared_inputs(doc.input.as_ref());
    let participants: BTreeSet<&str> = doc.participants.iter().map(String::as_str).collect();
    let ctx = Ctx {
        participants: &participants,
        checks,
        declared: declared.as_ref(),
        forward: doc.steps.iter().map(|s| s.name.as_str()).collect(),
        compensations: doc
            .steps
            .iter()
            .filter_map(|s| s.compensation.as_ref().map(|c| c.name.as_str()))
            .collect(),
    };
    let mut steps = Vec::new();
    for (i, step) in doc.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        let forward = ctx.action(
            &mut out,
            &format!("{at}.call"),
            i,
            ActionDoc {
                step: &step.name,
                participant: &step.call.participant,
                method: &step.call.method,
                path: &step.call.path,
                body: step.call.body.as_ref(),
                timeout: step.timeout.as_deref(),
                timeout_at: format!("{at}.timeout"),
            },
        );
        let compensation = step.compensation.as_ref().map(|c| {
            ctx.action(
                &mut out,
                &format!("{at}.compensation"),
                i,
                ActionDoc {
                    step: &c.name,
                    participant: &c.participant,
                    method: &c.method,
                    path: &c.path,
                    body: c.body.as_ref(),
                    timeout: c.timeout.as_deref(),
                    timeout_at: format!("{at}.compensation.timeout"),
                },
            )
        });
        let max_attempts = step.retry.as_ref().and_then(|r| r.max_attempts);
        if max_attempts == Some(0) {
            out.push(Diagnostic::error(
                "invalid_retry",
                format!("{at}.retry.max_attempts"),
                "max_attempts counts the first attempt too: give 1 or more",
            ));
        }
        if let Some(statuses) = &step.business_failure {
            for (j, &status) in statuses.iter().enumerate() {
                if !(300..600).contains(&status) {
                    out.push(Diagnostic::error(
                        "invalid_status",
                        format!("{at}.business_failure[{j}]"),
                        format!("{status} is not a failure status; give statuses from 300 to 599"),
                    ));
                }
            }
        }
        if let (Some(mut forward), compensation) = (forward, compensation) {
            forward.max_attempts = max_attempts.map(|n| n as usize);
            forward.business_failure = step.business_failure.clone();
            match compensation {
                Some(None) => {}
                Some(Some(c)) => steps.push(StepDef {
                    forward,
                    compensation: Some(c),
                }),
                None => steps.push(StepDef {
                    forward,
                    compensation: None,
                }),
            }
        }
    }
    let mut read = super::fields_read(&steps);
    for step in &mut steps {
        step.forward.needs = read.remove(&*step.forward.step).unwrap_or_default();
    }
    for (field, source) in doc.messages.iter().flat_map(MessagesDoc::templates) {
        let (code, message) = match template::check_message(source) {
            Ok(()) => continue,
            Err(template::MessageError::Syntax(message)) => ("template_syntax", message),
            Err(template::MessageError::Unknown(message)) => ("unknown_variable", message),
        };
        out.push(Diagnostic::error(
            code,
            format!("messages.{field}"),
            message,
        ));
    }
    warn_uncompensated(&doc, &mut out);
    let messages =
        template::Messages::compile(doc.messages.iter().flat_map(MessagesDoc::templates));
    if let Err(err) = &messages {
        out.push(Diagnostic::error(
            "template_syntax",
            "messages",
            err.to_string(),
        ));
    }
    let failed = out.iter().any(|d| d.severity == Severity::Error);
    let definition = (!failed && steps.len() == doc.steps.len())
        .then_some(())
        .and(input)
        .zip(messages.ok())
        .map(|(input, messages)| Definition {
            name: Arc::from(doc.name.as_str()),
            version: doc.version,
            digest: doc.digest(),
            steps,
            messages,
            input,
            document: doc,
        });
    Compiled {
        definition,
        diagnostics: out,
    }
}

/// Checks a definition name given elsewhere than in a document (a webhook's
/// filter).
pub fn check_name(s: &str) -> Result<(), String> {
    if is_name(s) {
        return Ok(());
    }
    Err(format!(
        "{s:?} is not a definition name: 1 to {NAME_MAX_LEN} letters, digits, '-', '_' or '.', starting with a letter or digit"
    ))
}

/// A name usable in a URL path segment.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_MAX_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// A participant name: it becomes `PARTICIPANT_<NAME>_URL`.
fn is_participant_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_MAX_LEN
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A step name: an identifier, so that `steps.<name>.<field>` reads it.
fn is_step_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_MAX_LEN
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The setting that gives `participant`'s base URL.
pub fn url_setting(participant: &str) -> String {
    format!("PARTICIPANT_{}_URL", participant.to_ascii_uppercase())
}

/// Names the API's own routes take under `/definitions/` and `/sagas/`.
pub const RESERVED_NAMES: [&str; 4] = ["schema", "validate", "dry-run", "counts"];

fn check_names(doc: &Document, out: &mut Vec<Diagnostic>) {
    if RESERVED_NAMES.contains(&doc.name.as_str()) {
        out.push(Diagnostic::error(
            "invalid_name",
            "name",
            format!(
                "{:?} is taken by the API (/definitions/{} or /sagas/{}): choose another name",
                doc.name, doc.name, doc.name
            ),
        ));
    } else if !is_name(&doc.name) {
        out.push(Diagnostic::error(
            "invalid_name",
            "name",
            format!(
                "{:?} is not a definition name: give 1 to {NAME_MAX_LEN} letters, digits, - _ or ., starting with a letter or digit",
                doc.name
            ),
        ));
    }
    if doc.version < 1 {
        out.push(Diagnostic::error(
            "invalid_version",
            "version",
            format!("version {} is not positive: give 1 or more", doc.version),
        ));
    }
    let mut seen = HashSet::new();
    for (i, p) in doc.participants.iter().enumerate() {
        if !is_participant_name(p) {
            out.push(Diagnostic::error(
                "invalid_participant_name",
                format!("participants[{i}]"),
                format!("{p:?} is not a participant name: give lower-case letters, digits and _, starting with a letter"),
            ));
        }
        if !seen.insert(p) {
            out.push(Diagnostic::error(
                "duplicate_participant",
                format!("participants[{i}]"),
                format!("participant {p} is listed twice"),
            ));
        }
    }
    if doc.steps.is_empty() {
        out.push(Diagnostic::error(
            "no_steps",
            "steps",
            "a saga needs at least one step",
        ));
    }
    let mut names = HashSet::new();
    for (i, step) in doc.steps.iter().enumerate() {
        let compensation = step
            .compensation
            .as_ref()
            .map(|c| (format!("steps[{i}].compensation.name"), &c.name));
        for (at, name) in
            std::iter::once((format!("steps[{i}].name"), &step.name)).chain(compensation)
        {
            if !is_step_name(name) {
                out.push(Diagnostic::error(
                    "invalid_step_name",
                    at.clone(),
                    format!("{name:?} is not a step name: give letters, digits and _, starting with a letter"),
                ));
            }
            if !names.insert(name) {
                out.push(Diagnostic::error(
                    "duplicate_step",
                    at,
                    format!("step name {name} is used twice; every step and compensation needs a name of its own"),
                ));
            }
        }
    }
}

fn check_input(doc: &Document, out: &mut Vec<Diagnostic>) -> Option<InputSchema> {
    let Some(schema) = &doc.input else {
        return Some(InputSchema {
            schema: None,
            validator: None,
        });
    };
    if let Err(err) = jsonschema::meta::validate(schema) {
        let at = err.instance_path().to_string().replace('/', ".");
        out.push(Diagnostic::error(
            "invalid_input_schema",
            format!("input{at}"),
            format!("the input is not a valid JSON Schema: {err}"),
        ));
        return None;
    }
    if let Some(kind) = schema.get("type")
        && kind != "object"
    {
        out.push(Diagnostic::error(
            "input_not_object",
            "input.type",
            format!("the input of a saga is a JSON object; the schema says type {kind}"),
        ));
    }
    match jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
    {
        Ok(validator) => Some(InputSchema {
            schema: Some(schema.clone()),
            validator: Some(validator),
        }),
        Err(err) => {
            out.push(Diagnostic::error(
                "invalid_input_schema",
                "input",
                format!("the input schema does not compile: {err}"),
            ));
            None
        }
    }
}

/// The input fields the schema declares, as nested maps (None: the schema
/// says nothing, so any field may be read).
#[derive(Debug)]
struct Declared(BTreeMap<String, Option<Declared>>);

fn declared_inputs(schema: Option<&Value>) -> Option<Declared> {
    let properties = schema?.get("properties")?.as_object()?;
    Some(Declared(
        properties
            .iter()
            .map(|(name, sub)| (name.clone(), declared_inputs(Some(sub))))
            .collect(),
    ))
}

/// An action's fields as written, forward call or compensation.
struct ActionDoc<'a> {
    step: &'a str,
    participant: &'a str,
    method: &'a str,
    path: &'a str,
    body: Option<&'a Value>,
    timeout: Option<&'a str>,
    timeout_at: String,
}

struct Ctx<'a> {
    participants: &'a BTreeSet<&'a str>,
    checks: &'a Checks,
    declared: Option<&'a Declared>,
    forward: Vec<&'a str>,
    compensations: Vec<&'a str>,
}

impl Ctx<'_> {
    /// Checks and compiles one action of the step at `index`; None when it
    /// has an error.
    fn action(
        &self,
        out: &mut Vec<Diagnostic>,
        at: &str,
        index: usize,
        doc: ActionDoc<'_>,
    ) -> Option<Action> {
        let errors = out.len();
        if !self.participants.contains(doc.participant) {
            out.push(Diagnostic::error(
                "unknown_participant",
                format!("{at}.participant"),
                format!(
                    "participant {} is not in the definition's participants; add it there",
                    doc.participant
                ),
            ));
        } else if let Some(configured) = &self.checks.configured
            && !configured.contains(doc.participant)
        {
            out.push(Diagnostic::error(
                "participant_url_missing",
                format!("{at}.participant"),
                format!(
                    "participant {} has no base URL: set {}",
                    doc.participant,
                    url_setting(doc.participant)
                ),
            ));
        }
        let method = match doc.method.to_ascii_uppercase().as_str() {
            "GET" => Some(reqwest::Method::GET),
            "POST" => Some(reqwest::Method::POST),
            "PUT" => Some(reqwest::Method::PUT),
            "PATCH" => Some(reqwest::Method::PATCH),
            "DELETE" => Some(reqwest::Method::DELETE),
            _ => {
                out.push(Diagnostic::error(
                    "invalid_method",
                    format!("{at}.method"),
                    format!(
                        "method {:?} is not one of GET, POST, PUT, PATCH, DELETE",
                        doc.method
                    ),
                ));
                None
            }
        };
        if !doc.path.starts_with('/') {
            out.push(Diagnostic::error(
                "invalid_path",
                format!("{at}.path"),
                format!("path {:?} must start with /", doc.path),
            ));
        }
        let path = self.template(out, &format!("{at}.path"), index, &Value::from(doc.path));
        let body = doc.body.map(|body| {
            let mut texts = BTreeMap::new();
            strings(body, &format!("{at}.body"), &mut texts);
            for (path, text) in texts {
                self.template(out, &path, index, &Value::from(text));
            }
            Template::compile(body).ok()
        });
        let timeout = doc.timeout.and_then(|t| match parse_duration(t) {
            Some(d) if !d.is_zero() => {
                if let Some(max) = self.checks.max_timeout
                    && d > max
                {
                    out.push(Diagnostic::error(
                        "timeout_exceeds_lease",
                        doc.timeout_at.clone(),
                        format!(
                            "timeout {t} is longer than the lease allows ({} ms): raise LEASE_SECS or shorten the timeout",
                            max.as_millis()
                        ),
                    ));
                }
                Some(d)
            }
            _ => {
                out.push(Diagnostic::error(
                    "invalid_timeout",
                    doc.timeout_at.clone(),
                    format!("timeout {t:?} is not a positive duration such as 2s or 500ms"),
                ));
                None
            }
        });
        if out.len() > errors {
            return None;
        }
        Some(Action {
            step: Arc::from(doc.step),
            participant: Arc::from(doc.participant),
            method: method?,
            path: path?,
            body: body.flatten(),
            timeout,
            max_attempts: None,
            business_failure: None,
            needs: Vec::new(),
        })
    }

    /// Compiles one string of the action at `index` and checks what its
    /// expressions read.
    fn template(
        &self,
        out: &mut Vec<Diagnostic>,
        at: &str,
        index: usize,
        text: &Value,
    ) -> Option<Template> {
        match Template::compile(text) {
            Ok(template) => {
                for expr in template.exprs() {
                    self.references(out, at, index, expr);
                }
                Some(template)
            }
            Err(err) => {
                out.push(Diagnostic::error("template_syntax", at, err.message));
                None
            }
        }
    }

    fn references(&self, out: &mut Vec<Diagnostic>, at: &str, index: usize, expr: &Expr) {
        let source = &expr.source;
        for path in expr.references() {
            let Some((root, rest)) = path.split_first() else {
                continue;
            };
            match root.as_str() {
                "input" => {
                    let mut declared = self.declared;
                    let mut walked = String::from("input");
                    for field in rest {
                        let Some(Declared(fields)) = declared else {
                            break;
                        };
                        let Some(inner) = fields.get(field) else {
                            out.push(Diagnostic::error(
                                "undeclared_input",
                                at,
                                format!(
                                    "{{{{ {source} }}}} reads {walked}.{field}, which the input schema does not declare; add it to the input's properties"
                                ),
                            ));
                            break;
                        };
                        walked.push('.');
                        walked.push_str(field);
                        declared = inner.as_ref();
                    }
                }
                "saga" => {
                    if let Some(field) = rest.first()
                        && !matches!(field.as_str(), "id" | "definition" | "version")
                    {
                        out.push(Diagnostic::error(
                            "unknown_saga_field",
                            at,
                            format!("{{{{ {source} }}}} reads saga.{field}; saga has id, definition and version"),
                        ));
                    }
                }
                "steps" => {
                    let Some(step) = rest.first() else {
                        continue;
                    };
                    let message = match self.forward.iter().position(|s| s == step) {
                        Some(j) if j < index => continue,
                        Some(_) => format!(
                            "{{{{ {source} }}}} reads step {step}, which has not answered yet at this step; read only earlier steps"
                        ),
                        None if self.compensations.contains(&step.as_str()) => format!(
                            "{{{{ {source} }}}} reads compensation {step}; only forward steps' answers can be read"
                        ),
                        None => format!(
                            "{{{{ {source} }}}} reads step {step}, which the definition does not have"
                        ),
                    };
                    let code = if self.forward.contains(&step.as_str()) {
                        "later_step"
                    } else {
                        "unknown_step"
                    };
                    out.push(Diagnostic::error(code, at, message));
                }
                other => out.push(Diagnostic::error(
                    "unknown_variable",
                    at,
                    format!(
                        "{{{{ {source} }}}} reads {other}; templates can read input, saga and steps"
                    ),
                )),
            }
        }
    }
}

/// A warning for each step with no compensation that a later step could
/// fail after, unless an earlier compensated step of the same participant
/// is undone after it (as a reservation's cancel undoes its confirmation).
fn warn_uncompensated(doc: &Document, out: &mut Vec<Diagnostic>) {
    for (i, step) in doc.steps.iter().enumerate() {
        if step.compensation.is_some() || i + 1 == doc.steps.len() {
            continue;
        }
        let covered = doc.steps[..i].iter().any(|earlier| {
            earlier
                .compensation
                .as_ref()
                .is_some_and(|c| c.participant == step.call.participant)
        });
        if !covered {
            out.push(Diagnostic::warning(
                "no_compensation",
                format!("steps[{i}]"),
                format!(
                    "step {} has no compensation, and a later step can fail: its effect would stay when the saga fails",
                    step.name
                ),
            ));
        }
    }
}

/// `500ms`, `2s`, `1.5s` or `1m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let number: f64 = number.trim().parse().ok()?;
    let secs = match unit {
        "ms" => number / 1_000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Format, TRAVEL_YAML};

    fn diagnostics(yaml: &str) -> Vec<(Severity, &'static str, String)> {
        let doc = Document::parse(yaml, Format::Yaml).unwrap();
        compile(doc, &Checks::default())
            .diagnostics
            .into_iter()
            .map(|d| (d.severity, d.code, d.path))
            .collect()
    }

    #[test]
    fn the_travel_saga_is_valid_without_warnings() {
        assert_eq!(diagnostics(TRAVEL_YAML), vec![]);
    }

    #[test]
    fn names_the_api_takes_are_refused() {
        for name in RESERVED_NAMES {
            let yaml = TRAVEL_YAML.replacen("name: travel", &format!("name: {name}"), 1);
            assert_eq!(
                diagnostics(&yaml),
                vec![(Severity::Error, "invalid_name", "name".to_owned())]
            );
        }
    }

    #[test]
    fn every_kind_of_mistake_is_found_with_its_path() {
        let yaml = r#"
name: bad
version: 0
participants: [a, a]
input:
  type: object
  properties: {n: {type: integer}}
steps:
  - name: One
    call: {participant: a, path: /one, body: {x: "{{ input.m }}", y: "{{ steps.Two.id }}", z: "{{ input.n + }}"}}
    timeout: 0s
  - name: Two
    call: {participant: b, method: FETCH, path: two, body: {w: "{{ steps.Undo.id }}", s: "{{ saga.owner }}", v: "{{ env.HOME }}"}}
    retry: {max_attempts: 0}
    business_failure: [200]
    compensation: {name: One, participant: a, path: /undo}
  - name: Three
    call: {participant: a, path: /three}
messages:
  failed: "{% if %}"
  succeeded: "{% for s in undone %}{{ loop.index }} {{ s }}{% endfor %} {{ trip.id }}"
"#;
        let found = diagnostics(yaml);
        let error = |code, path: &str| (Severity::Error, code, path.to_owned());
        for expected in [
            error("invalid_version", "version"),
            error("duplicate_participant", "participants[1]"),
            error("duplicate_step", "steps[1].compensation.name"),
            error("undeclared_input", "steps[0].call.body.x"),
            error("later_step", "steps[0].call.body.y"),
            error("template_syntax", "steps[0].call.body.z"),
            error("invalid_timeout", "steps[0].timeout"),
            error("unknown_participant", "steps[1].call.participant"),
            error("invalid_method", "steps[1].call.method"),
            error("invalid_path", "steps[1].call.path"),
            error("unknown_step", "steps[1].call.body.w"),
            error("unknown_saga_field", "steps[1].call.body.s"),
            error("unknown_variable", "steps[1].call.body.v"),
            error("invalid_retry", "steps[1].retry.max_attempts"),
            error("invalid_status", "steps[1].business_failure[0]"),
            error("template_syntax", "messages.failed"),
            error("unknown_variable", "messages.succeeded"),
            (Severity::Warning, "no_compensation", "steps[0]".to_owned()),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:#?}");
        }
    }

    #[test]
    fn an_input_schema_that_is_no_json_schema_is_refused() {
        let yaml = "
name: s
version: 1
participants: [a]
input: {type: object, properties: {n: {type: wrong}}}
steps: [{name: A, call: {participant: a, path: /a}}]
";
        let found = diagnostics(yaml);
        assert!(
            found
                .iter()
                .any(|(_, code, _)| *code == "invalid_input_schema"),
            "{found:?}"
        );
    }

    #[test]
    fn configured_participants_and_the_lease_are_checked_when_known() {
        let doc = Document::parse(TRAVEL_YAML, Format::Yaml).unwrap();
        let checks = Checks {
            configured: Some(["flights".to_owned(), "cars".to_owned()].into()),
            max_timeout: None,
        };
        let compiled = compile(doc, &checks);
        assert!(!compiled.is_valid());
        let d = &compiled.diagnostics[0];
        assert_eq!(d.code, "participant_url_missing");
        assert!(
            d.message.contains("PARTICIPANT_PAYMENTS_URL"),
            "{}",
            d.message
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
