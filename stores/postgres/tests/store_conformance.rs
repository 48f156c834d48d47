//! The store conformance suite against PostgreSQL (scripts/postgres.sh starts it): every
//! case opens new stores, each with a pool of its own, on one table of the test database.
//! Cases use scopes of their own, so they share the table.

mod support;

use event_binder_core::conformance::stores::StoreLimits;
use event_binder_core::Result;
use event_binder_postgres::PostgresStore;

/// The suite's table, created by the first store that connects.
const TABLE: &str = "event_binder_conformance";

async fn open(limits: StoreLimits) -> Result<PostgresStore> {
    let config = support::config(TABLE)
        .lease(limits.lease)
        .retention(limits.retention);
    PostgresStore::with_config(config).await
}

event_binder_core::store_conformance_tests!(open);
