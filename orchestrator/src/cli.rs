//! `orchestrator validate <file>...`, `orchestrator dry-run <file>` and
//! `orchestrator schema`: the checks, the dry run and the document's JSON
//! Schema of the API, on files, with no database and no server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::definition::dry_run::{self, Outcome};
use crate::definition::validate::{self, Checks, Severity};
use crate::definition::{Document, Format};

/// The definition tools.
#[derive(Debug, clap::Parser)]
#[command(name = "orchestrator", about = "Check and try saga definitions")]
pub enum Tool {
    /// Check definition files: prints each diagnostic, exits 1 on errors.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the calls a saga of this definition would make, calling
    /// nothing: every step succeeds unless an --outcome says otherwise.
    DryRun {
        file: PathBuf,
        /// The saga's input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// The saga's id.
        #[arg(long, default_value = "dry-run")]
        id: String,
        /// A mocked answer, as STEP=STATUS (repeatable), such as
        /// ProcessPayment=422.
        #[arg(long = "outcome", value_name = "STEP=STATUS")]
        outcomes: Vec<String>,
        /// Attempts of a forward step that has no budget of its own.
        #[arg(long, env = "STEP_MAX_ATTEMPTS", default_value_t = 4)]
        step_max_attempts: usize,
    },
    /// Print the JSON Schema of a definition document.
    Schema,
}

/// Whether the process was asked for a tool rather than the server.
pub fn is_tool(first_arg: Option<&str>) -> bool {
    matches!(first_arg, Some("validate" | "dry-run" | "schema"))
}

/// Runs a tool; its exit status is 1 when a definition has errors.
pub fn main(tool: Tool) -> anyhow::Result<ExitCode> {
    match tool {
        Tool::Schema => {
            let schema = crate::definition::document::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Tool::Validate { files } => {
            let mut failed = false;
            for file in files {
                let diagnostics = match read(&file) {
                    Ok(doc) => validate::compile(doc, &Checks::default()).diagnostics,
                    Err(err) => vec![validate::Diagnostic::error("parse", "", format!("{err:#}"))],
                };
                let errors = diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .count();
                for d in &diagnostics {
                    let severity = match d.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    };
                    println!(
                        "{}: {severity} {} at {}: {}",
                        file.display(),
                        d.code,
                        if d.path.is_empty() {
                            "(document)"
                        } else {
                            &d.path
                        },
                        d.message
                    );
                }
                if errors == 0 {
                    println!("{}: valid", file.display());
                }
                failed |= errors > 0;
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Tool::DryRun {
            file,
            input,
            id,
            outcomes,
            step_max_attempts,
        } => {
            let compiled = validate::compile(read(&file)?, &Checks::default());
            let Some(definition) = compiled.definition else {
                for d in compiled.diagnostics {
                    eprintln!(
                        "{}: {} at {}: {}",
                        file.display(),
                        d.code,
                        d.path,
                        d.message
                    );
                }
                return Ok(ExitCode::FAILURE);
            };
            let input: Value = serde_json::from_str(&input).context("--input is not JSON")?;
            let input = definition
                .prepare_input(input)
                .map_err(|err| anyhow::anyhow!("--input does not fit the definition: {err}"))?;
            let mut mocked = BTreeMap::new();
            for given in outcomes {
                let (step, status) = given
                    .split_once('=')
                    .and_then(|(step, status)| Some((step, status.parse::<u16>().ok()?)))
                    .with_context(|| format!("--outcome {given:?} is not STEP=STATUS"))?;
                mocked.insert(step.to_owned(), Outcome { status, body: None });
            }
            let run = dry_run::run(
                &definition,
                &id,
                &input,
                &mocked,
                |p| format!("http://{p}"),
                step_max_attempts,
            );
            println!("{}", serde_json::to_string_pretty(&run)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Document> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Document::parse(&text, Format::from_path(path))?)
}
