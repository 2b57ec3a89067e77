//! Each service's own database role: a login role that owns its schema and
//! nothing else, in a database where nothing is granted to `PUBLIC`. Made
//! by an administrator (`<service> provision`, the native runner, the
//! tests' cluster, compose's `db-setup`), all through [`provision`]; the
//! service then connects as its role and migrates its own schema.
//!
//! Why the service's own role runs its migrations, not a separate
//! migration role: the schema's owner is the only role that may change its
//! tables, and a service that owns nothing else cannot reach beyond it
//! whatever its migrations say; a second role per service would be a
//! second secret to hand out for no narrower access.

use std::str::FromStr;

use anyhow::{Context, bail};
use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// `<service> provision`'s settings.
#[derive(Debug, clap::Parser)]
#[command(
    about = "Makes this service's database role the owner of its schema, and of nothing else, as DATABASE_ADMIN_URL; then exits"
)]
pub struct ProvisionArgs {
    /// The service's own URL: its role, the role's password, the database
    /// (or the file DATABASE_URL_FILE names holds it). Never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// An administrator's URL, a superuser or a role that may create roles
    /// and owns the database (or the file DATABASE_ADMIN_URL_FILE names
    /// holds it). Used for this only; never printed.
    #[arg(long, env = "DATABASE_ADMIN_URL", hide_env_values = true)]
    pub database_admin_url: String,
}

/// Whether the command line asks for `provision` (the first argument).
pub fn asked() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == "provision")
}

/// `<service> provision`: [`provision`] for the service of `schema`, with
/// the settings of the command line after the word `provision`.
pub async fn provision_main(service: &str, schema: &str) -> anyhow::Result<()> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    args.remove(1);
    args[0] = format!("{service} provision").into();
    let args: ProvisionArgs = crate::config::parse_from(args);
    provision(&args.database_admin_url, &args.database_url, schema).await?;
    let role = ServiceRole::of_url(&args.database_url)?;
    println!(
        "{service}: role {} owns schema {schema} in database {}, and nothing else",
        role.role, role.database
    );
    Ok(())
}

/// The role, its password and database a service's `DATABASE_URL` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRole {
    pub role: String,
    pub password: Option<String>,
    pub database: String,
}

impl ServiceRole {
    /// Reads them from `url`; refuses a role name that is not a plain
    /// lower-case identifier (it is written into statements).
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url).context("not a PostgreSQL URL")?;
        let role = options.get_username().to_owned();
        let plain = role
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()));
        if role.is_empty() || role.len() > 63 || !plain {
            bail!("the URL's user {role:?} is not a plain role name ([a-z_][a-z0-9_]*)");
        }
        let database = options
            .get_database()
            .context("the URL names no database")?
            .to_owned();
        let password = url::Url::parse(url).ok().and_then(|u| {
            let password = u.password()?;
            Some(
                percent_encoding::percent_decode_str(password)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        });
        Ok(Self {
            role,
            password,
            database,
        })
    }
}

/// As the administrator `admin_url` names (a superuser, or a role that may
/// create roles and owns the database): makes the role `service_url` names
/// a login role with its password and no other power, and the owner of
/// `schema` (created if missing; its objects, made before by another role,
/// handed over) in the database `service_url` names; revokes what
/// PostgreSQL grants to `PUBLIC` by default there (connecting, temporary
/// tables, the `public` schema, the schema's functions and types), and
/// grants the role `CONNECT`. Safe to run again, and alongside another
/// provision.
pub async fn provision(admin_url: &str, service_url: &str, schema: &str) -> anyhow::Result<()> {
    let service = ServiceRole::of_url(service_url).context("DATABASE_URL")?;
    let admin = crate::db::options(admin_url).context("DATABASE_ADMIN_URL")?;
    // Roles belong to the whole server, and the provisions of several
    // databases (the tests') may update one role at once: the loser of such
    // a race tries again.
    (|| make_role(&admin, &service))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(std::time::Duration::from_millis(10))
                .with_max_times(8),
        )
        .when(|err| {
            err.downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
                .and_then(|e| e.code())
                .is_some_and(|code| matches!(&*code, "XX000" | "42710" | "23505" | "40001"))
        })
        .await?;

    let mut db = admin
        .database(&service.database)
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot connect to database {} as the administrator",
                service.database
            )
        })?;
    let statements: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(ARRAY[
             format('REVOKE ALL ON DATABASE %I FROM PUBLIC', $1::text),
             format('GRANT CONNECT ON DATABASE %I TO %I', $1, $2::text),
             'REVOKE ALL ON SCHEMA public FROM PUBLIC',
             format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', $3::text, $2),
             format('ALTER SCHEMA %I OWNER TO %I', $3, $2),
             format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', $3),
             format('ALTER DEFAULT PRIVILEGES FOR ROLE %I REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC', $2),
             format('ALTER DEFAULT PRIVILEGES FOR ROLE %I REVOKE USAGE ON TYPES FROM PUBLIC', $2)
         ])",
    )
    .bind(&service.database)
    .bind(&service.role)
    .bind(schema)
    .fetch_all(&mut db)
    .await?;
    let mut tx = db.begin().await?;
    execute_all(&mut tx, statements).await?;
    // What the schema holds already (made by the administrator, or by a
    // superuser before roles): the role's, and no one else's.
    let handed_over: Vec<String> = sqlx::query_scalar(
        "SELECT format('ALTER %s %s OWNER TO %I', kind, name, $2::text) FROM (
             SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                   WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind,
                    format('%I.%I', n.nspname, c.relname) AS name
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
             UNION ALL
             SELECT 'TYPE', format('%I.%I', n.nspname, t.typname)
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = $1 AND t.typtype IN ('e', 'd', 'r', 'm')
             UNION ALL
             SELECT 'ROUTINE', p.oid::regprocedure::text
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = $1
         ) owned
         UNION ALL
         SELECT format('REVOKE ALL ON TYPE %I.%I FROM PUBLIC', n.nspname, t.typname)
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = $1 AND t.typtype IN ('e', 'd', 'r', 'm')
         UNION ALL
         SELECT format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM PUBLIC', $1)",
    )
    .bind(schema)
    .bind(&service.role)
    .fetch_all(&mut *tx)
    .await?;
    execute_all(&mut tx, handed_over).await?;
    tx.commit().await?;
    db.close().await?;
    Ok(())
}

/// Makes `service`'s role, or brings the one there to what it should be.
async fn make_role(admin: &PgConnectOptions, service: &ServiceRole) -> anyhow::Result<()> {
    let mut server = admin
        .connect()
        .await
        .context("cannot connect to DATABASE_ADMIN_URL")?;
    let mut tx = server.begin().await?;
    let superuser: Option<bool> =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
            .bind(&service.role)
            .fetch_optional(&mut *tx)
            .await?;
    if superuser == Some(true) {
        bail!(
            "DATABASE_URL's user {} is a superuser; give the service a role of its own (such as its schema's name)",
            service.role
        );
    }
    let mut statements = Vec::new();
    if superuser.is_none() {
        statements.push(format!("CREATE ROLE \"{}\" LOGIN", service.role));
    }
    let attributes: String = sqlx::query_scalar(
        "SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', $1::text)
                || coalesce(format(' PASSWORD %L', $2::text), '')",
    )
    .bind(&service.role)
    .bind(&service.password)
    .fetch_one(&mut *tx)
    .await?;
    statements.push(attributes);
    execute_all(&mut tx, statements).await?;
    tx.commit().await?;
    server.close().await?;
    Ok(())
}

/// Runs each of `statements`, made by this module, in `tx`.
async fn execute_all(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    statements: Vec<String>,
) -> sqlx::Result<()> {
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Whether the connection's role is a superuser: a service warns at start
/// when it runs as one.
pub async fn is_superuser(pool: &sqlx::PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_url_gives_its_role_password_and_database() {
        let role = ServiceRole::of_url("postgres://flights:s%40cret@db:5432/travel").unwrap();
        assert_eq!(
            role,
            ServiceRole {
                role: "flights".into(),
                password: Some("s@cret".into()),
                database: "travel".into(),
            }
        );
        let err = ServiceRole::of_url("postgres://Robert%27%3B@db/travel")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a plain role name"), "{err}");
    }
}
