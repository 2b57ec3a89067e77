//! `orchestrator.definitions`: every registered definition version, never
//! updated once written.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A stored definition version.
#[derive(Debug, Clone)]
pub struct DefinitionRecord {
    pub name: String,
    pub version: i32,
    pub digest: String,
    pub document: Value,
    pub created_at: DateTime<Utc>,
}

/// What registering a version did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The version is new.
    Created,
    /// The same content was registered before: nothing changed.
    Unchanged,
    /// The version exists with other content, whose digest this is.
    Conflict { existing: String },
}

/// Stores version `version` of `name`, unless it exists.
#[tracing::instrument(skip_all, fields(%name, version), err)]
pub async fn register(
    db: &mut sqlx::PgConnection,
    name: &str,
    version: i32,
    digest: &str,
    document: &Value,
) -> sqlx::Result<Registered> {
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO orchestrator.definitions (name, version, digest, document)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (name, version) DO NOTHING
           RETURNING version"#,
        name,
        version,
        digest,
        document,
    )
    .fetch_optional(&mut *db)
    .await?;
    if inserted.is_some() {
        return Ok(Registered::Created);
    }
    let existing = sqlx::query_scalar!(
        "SELECT digest FROM orchestrator.definitions WHERE name = $1 AND version = $2",
        name,
        version,
    )
    .fetch_one(&mut *db)
    .await?;
    Ok(if existing == digest {
        Registered::Unchanged
    } else {
        Registered::Conflict { existing }
    })
}

/// Version `version` of `name`, or the newest one when `version` is None.
pub async fn find(
    db: impl sqlx::PgExecutor<'_>,
    name: &str,
    version: Option<i32>,
) -> sqlx::Result<Option<DefinitionRecord>> {
    sqlx::query_as!(
        DefinitionRecord,
        r#"SELECT name, version, digest, document, created_at FROM orchestrator.definitions
           WHERE name = $1 AND ($2::int4 IS NULL OR version = $2)
           ORDER BY version DESC LIMIT 1"#,
        name,
        version,
    )
    .fetch_optional(db)
    .await
}

/// The versions of `name` (or of every definition), oldest first, without
/// their documents.
pub async fn list(
    db: impl sqlx::PgExecutor<'_>,
    name: Option<&str>,
) -> sqlx::Result<Vec<(String, i32, String, DateTime<Utc>)>> {
    let rows = sqlx::query!(
        r#"SELECT name, version, digest, created_at FROM orchestrator.definitions
           WHERE $1::text IS NULL OR name = $1
           ORDER BY name, version"#,
        name,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.name, r.version, r.digest, r.created_at))
        .collect())
}

/// The newest version of every definition.
pub async fn latest(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<(String, i32)>> {
    let rows = sqlx::query!(
        r#"SELECT name, max(version) AS "version!" FROM orchestrator.definitions GROUP BY name"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.name, r.version)).collect())
}
