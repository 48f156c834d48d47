//! The store conformance suite, against the Redis at 127.0.0.1:6379 (`scripts/redis.sh`
//! starts it).

use event_binder_core::conformance::stores::StoreLimits;
use event_binder_redis::{RedisConfig, RedisStore};
use std::sync::OnceLock;

/// A key prefix of this run's own, so that runs never meet.
fn prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("event-binder-test:{}:", event_binder_core::new_message_id()))
}

/// A new store, with a connection of its own, on the one Redis.
async fn open(limits: StoreLimits) -> event_binder_core::Result<RedisStore> {
    RedisStore::with_config(
        RedisConfig::new("redis://127.0.0.1:6379/0")
            .prefix(prefix())
            .lease(limits.lease)
            .retention(limits.retention),
    )
    .await
}

event_binder_core::store_conformance_tests!(open);
