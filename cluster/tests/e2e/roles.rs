//! Each service connects as a role of its own, made by
//! `common::roles::provision`: it owns its schema and nothing else, in a
//! database where nothing is granted to PUBLIC. It can neither read nor
//! write another service's schema, nor create anything outside its own.

use sqlx::{Connection, PgConnection};

use crate::support::Env;

/// The services' schemas, each with a table of its own.
const OWN: [(&str, &str); 4] = [
    ("flights", "flights.reservations"),
    ("cars", "cars.rentals"),
    ("payments", "payments.payments"),
    ("orchestrator", "orchestrator.sagas"),
];

/// The SQLSTATE of what `sql` fails with, or "ok".
async fn outcome(conn: &mut PgConnection, sql: &str) -> String {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => "ok".to_owned(),
        Err(err) => err
            .as_database_error()
            .and_then(|e| e.code())
            .map_or_else(|| err.to_string(), |code| code.into_owned()),
    }
}

#[tokio::test]
async fn each_service_role_reaches_its_own_schema_and_nothing_else() {
    let env = Env::start().await;
    // The services work as their roles: a trip that compensates touches
    // every schema.
    let trip = env.get("/trip?runType=failPayment&tripID=roles-1").await;
    assert_eq!(trip.body["status"], "failed", "{}", trip.body);

    const DENIED: &str = "42501";
    for (schema, own_table) in OWN {
        let url = env.cluster.database_url_of(schema).unwrap();
        let mut conn = PgConnection::connect(url).await.unwrap();
        let (role, superuser): (String, bool) = sqlx::query_as(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!((role.as_str(), superuser), (schema, false));
        assert_eq!(
            outcome(&mut conn, &format!("SELECT count(*) FROM {own_table}")).await,
            "ok",
            "{schema} reads its own schema"
        );
        for (other, other_table) in OWN.iter().filter(|(s, _)| *s != schema) {
            for sql in [
                format!("SELECT count(*) FROM {other_table}"),
                format!("DELETE FROM {other_table}"),
                format!("CREATE TABLE {other}.intruder (x int)"),
            ] {
                assert_eq!(outcome(&mut conn, &sql).await, DENIED, "{schema}: {sql}");
            }
        }
        for sql in [
            "CREATE TABLE public.intruder (x int)",
            "CREATE TEMP TABLE intruder (x int)",
            "CREATE SCHEMA intruder",
        ] {
            assert_eq!(outcome(&mut conn, sql).await, DENIED, "{schema}: {sql}");
        }
        conn.close().await.unwrap();
    }

    // Nothing is granted to PUBLIC: not the database, not a schema, not a
    // type or a function in one.
    let public: Vec<String> = sqlx::query_scalar(
        "SELECT 'database' FROM pg_database
         WHERE datname = current_database()
           AND (datacl IS NULL OR EXISTS (SELECT FROM aclexplode(datacl) WHERE grantee = 0))
         UNION ALL
         SELECT 'schema ' || nspname FROM pg_namespace
         WHERE nspname IN ('public', 'flights', 'cars', 'payments', 'orchestrator')
           AND (nspacl IS NULL OR EXISTS (SELECT FROM aclexplode(nspacl) WHERE grantee = 0))
         UNION ALL
         SELECT 'type ' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname IN ('flights', 'cars', 'payments', 'orchestrator') AND t.typtype = 'e'
           AND (t.typacl IS NULL OR EXISTS (SELECT FROM aclexplode(t.typacl) WHERE grantee = 0))
         UNION ALL
         SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('flights', 'cars', 'payments', 'orchestrator')
           AND (p.proacl IS NULL OR EXISTS (SELECT FROM aclexplode(p.proacl) WHERE grantee = 0))",
    )
    .fetch_all(env.db.pool())
    .await
    .unwrap();
    assert_eq!(public, Vec::<String>::new(), "granted to PUBLIC");
    env.finish_clean().await;
}
