//! The consistency invariant of the design, checked over every trip:
//! a succeeded saga left a confirmed flight, a confirmed car and a charged
//! payment; a failed one left nothing pending, confirmed or charged; and no
//! participant holds a live row for a trip the orchestrator never started.

use sqlx::{PgPool, Row};

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    pub sagas: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Trips whose saga is still running or compensating.
    pub unfinished: Vec<String>,
    /// Trips whose participant rows break the invariant, with why.
    pub inconsistent: Vec<String>,
    /// Live participant rows for trips with no saga.
    pub orphans: Vec<String>,
}

impl Report {
    /// Panics with the findings unless every saga ended consistently.
    pub fn assert_clean(&self) {
        assert!(
            self.unfinished.is_empty() && self.inconsistent.is_empty() && self.orphans.is_empty(),
            "invariant broken: {self:#?}"
        );
    }
}

/// Checks every trip in the database.
pub async fn check(pool: &PgPool) -> anyhow::Result<Report> {
    let rows = sqlx::query(
        "SELECT s.saga_id AS trip_id, s.status::text AS saga, f.status::text AS flight,
                c.status::text AS car, p.status::text AS payment
         FROM orchestrator.sagas s
         LEFT JOIN flights.reservations f ON f.trip_id = s.saga_id
         LEFT JOIN cars.rentals c ON c.trip_id = s.saga_id
         LEFT JOIN payments.payments p ON p.trip_id = s.saga_id
         WHERE s.definition = 'travel'",
    )
    .fetch_all(pool)
    .await?;
    let mut report = Report {
        sagas: rows.len(),
        ..Report::default()
    };
    for row in rows {
        let trip_id: String = row.try_get("trip_id")?;
        let saga: String = row.try_get("saga")?;
        let flight: Option<String> = row.try_get("flight")?;
        let car: Option<String> = row.try_get("car")?;
        let payment: Option<String> = row.try_get("payment")?;
        let states = format!("flight {flight:?}, car {car:?}, payment {payment:?}");
        match saga.as_str() {
            "succeeded" => {
                report.succeeded += 1;
                let ok = flight.as_deref() == Some("confirmed")
                    && car.as_deref() == Some("confirmed")
                    && payment.as_deref() == Some("charged");
                if !ok {
                    report
                        .inconsistent
                        .push(format!("{trip_id}: succeeded with {states}"));
                }
            }
            "failed" => {
                report.failed += 1;
                let live =
                    |s: &Option<String>| matches!(s.as_deref(), Some("pending" | "confirmed"));
                if live(&flight) || live(&car) || payment.as_deref() == Some("charged") {
                    report
                        .inconsistent
                        .push(format!("{trip_id}: failed with {states}"));
                }
            }
            _ => report.unfinished.push(format!("{trip_id}: {saga}")),
        }
    }
    for table in ["flights.reservations", "cars.rentals", "payments.payments"] {
        let orphans = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT trip_id FROM {table} t
             WHERE status::text NOT IN ('cancelled', 'refunded')
               AND NOT EXISTS (SELECT 1 FROM orchestrator.sagas s WHERE s.saga_id = t.trip_id)"
        )))
        .fetch_all(pool)
        .await?;
        for row in orphans {
            let trip_id: String = row.try_get("trip_id")?;
            report.orphans.push(format!("{table}: {trip_id}"));
        }
    }
    Ok(report)
}
