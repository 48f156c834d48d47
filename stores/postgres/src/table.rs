//! The store's table: its validated name and the statements run on it.

use event_binder_core::{Error, Result};

/// The longest table name: PostgreSQL keeps 63 bytes of a name, and the index adds
/// `_forget_after` (13) to it.
pub(crate) const MAX_TABLE_LEN: usize = 50;
/// The longest schema name PostgreSQL keeps.
const MAX_SCHEMA_LEN: usize = 63;
/// Rows the purge deletes per statement, so that no statement holds many locks for long.
pub(crate) const PURGE_BATCH: i64 = 10_000;

/// The store's table: its name, schema and the SQL using it.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) schema: Schema,
    /// `begin`: claims the id, returning a row only when acquired.
    /// $1 scope, $2 id, $3 holder, $4 lease, $5 retention.
    pub(crate) claim: String,
    /// `begin`, when not acquired: whether the id is handled, or held and for how long.
    /// $1 scope, $2 id.
    pub(crate) look: String,
    /// `complete`: $1 scope, $2 id, $3 holder, $4 retention.
    pub(crate) complete: String,
    /// The inbox, in the handler's transaction: records the id as handled unless it is,
    /// returning a row only when it was not. $1 scope, $2 id, $3 holder, $4 retention.
    pub(crate) record: String,
    /// `abandon`: $1 scope, $2 id, $3 holder.
    pub(crate) abandon: String,
    /// Deletes up to [`PURGE_BATCH`] rows past `forget_after`: $1 the batch size.
    pub(crate) purge: String,
}

impl Table {
    /// The table of this name: letters, digits and `_`, not starting with a digit, at most
    /// [`MAX_TABLE_LEN`] characters, optionally after a schema name and a dot.
    pub(crate) fn new(name: &str) -> Result<Self> {
        let name = TableName::new(name)?;
        let (index, qualified_index) = name.index("forget_after");
        let t = &name.quoted;
        Ok(Table {
            claim: format!(
                "INSERT INTO {t} AS row (scope, id, holder, lease_until, handled_at, forget_after) \
                 VALUES ($1, $2, $3, now() + $4::interval, NULL, now() + $4::interval + $5::interval) \
                 ON CONFLICT (scope, id) DO UPDATE SET \
                     holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until, \
                     handled_at = NULL, forget_after = EXCLUDED.forget_after \
                 WHERE row.forget_after <= now() \
                    OR (row.handled_at IS NULL AND row.lease_until <= now()) \
                 RETURNING true"
            ),
            look: format!(
                "SELECT handled_at IS NOT NULL AS handled, \
                        (lease_until > now()) IS TRUE AS held, \
                        EXTRACT(EPOCH FROM lease_until - now())::float8 AS remaining \
                 FROM {t} WHERE scope = $1 AND id = $2 AND forget_after > now()"
            ),
            complete: format!(
                "INSERT INTO {t} AS row (scope, id, holder, lease_until, handled_at, forget_after) \
                 VALUES ($1, $2, $3, NULL, now(), now() + $4::interval) \
                 ON CONFLICT (scope, id) DO UPDATE SET \
                     holder = EXCLUDED.holder, lease_until = NULL, \
                     handled_at = EXCLUDED.handled_at, forget_after = EXCLUDED.forget_after"
            ),
            record: format!(
                "INSERT INTO {t} AS row (scope, id, holder, lease_until, handled_at, forget_after) \
                 VALUES ($1, $2, $3, NULL, now(), now() + $4::interval) \
                 ON CONFLICT (scope, id) DO UPDATE SET \
                     holder = EXCLUDED.holder, lease_until = NULL, \
                     handled_at = EXCLUDED.handled_at, forget_after = EXCLUDED.forget_after \
                 WHERE row.handled_at IS NULL OR row.forget_after <= now() \
                 RETURNING true"
            ),
            abandon: format!(
                "DELETE FROM {t} \
                 WHERE scope = $1 AND id = $2 AND holder = $3 AND handled_at IS NULL"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE (scope, id) IN ( \
                     SELECT scope, id FROM {t} WHERE forget_after <= now() \
                     LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 AND forget_after <= now()"
            ),
            schema: Schema {
                statements: vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {t} ( \
                             scope text NOT NULL, \
                             id text NOT NULL, \
                             holder text NOT NULL, \
                             lease_until timestamptz, \
                             handled_at timestamptz, \
                             forget_after timestamptz NOT NULL, \
                             PRIMARY KEY (scope, id), \
                             CHECK ((lease_until IS NULL) <> (handled_at IS NULL)))"
                    ),
                    format!("CREATE INDEX IF NOT EXISTS {index} ON {t} (forget_after)"),
                ],
                qualified_index,
                name,
            },
        })
    }

    /// The name as given.
    pub(crate) fn name(&self) -> &str {
        &self.schema.name.name
    }
}

/// A validated table name, `table` or `schema.table`.
#[derive(Debug)]
pub(crate) struct TableName {
    /// The name as given.
    pub(crate) name: String,
    /// The table, quoted (and schema-qualified if given): for SQL.
    pub(crate) quoted: String,
    /// The schema, quoted and followed by a dot, or nothing.
    qualifier: String,
    /// The table alone, unquoted and unqualified.
    bare: String,
}

impl TableName {
    /// The table of this name: letters, digits and `_`, not starting with a digit, at most
    /// [`MAX_TABLE_LEN`] characters, optionally after a schema name and a dot.
    pub(crate) fn new(name: &str) -> Result<Self> {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        if let Some(schema) = schema {
            check_part(name, "schema", schema, MAX_SCHEMA_LEN)?;
        }
        check_part(name, "table", table, MAX_TABLE_LEN)?;
        let qualifier = schema.map(|s| format!("{}.", quote(s))).unwrap_or_default();
        Ok(TableName {
            name: name.to_owned(),
            quoted: format!("{qualifier}{}", quote(table)),
            qualifier,
            bare: table.to_owned(),
        })
    }

    /// The index `{table}_{suffix}`: quoted and unqualified (it is created in the table's
    /// schema), and quoted and qualified as the table is (for `to_regclass`).
    pub(crate) fn index(&self, suffix: &str) -> (String, String) {
        let index = quote(&format!("{}_{suffix}", self.bare));
        let qualified = format!("{}{index}", self.qualifier);
        (index, qualified)
    }
}

/// A table and index to create, and how to tell they exist.
#[derive(Debug)]
pub(crate) struct Schema {
    pub(crate) name: TableName,
    /// The index, quoted and qualified as the table is: for `to_regclass`.
    qualified_index: String,
    /// `CREATE … IF NOT EXISTS` statements, run in order in one transaction.
    pub(crate) statements: Vec<String>,
}

impl Schema {
    /// Whether the table and its index exist: $1 the table, $2 the index.
    pub(crate) const EXISTS: &'static str =
        "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL";

    /// Serialises the creation of a table among instances: `CREATE TABLE IF NOT EXISTS`
    /// run by two at once can fail on PostgreSQL's catalog. $1 the table name.
    pub(crate) const LOCK: &'static str = "SELECT pg_advisory_xact_lock(1162756353, hashtext($1))";

    /// The table and its index as [`EXISTS`](Self::EXISTS) takes them.
    pub(crate) fn regclass_names(&self) -> (&str, &str) {
        (&self.name.quoted, &self.qualified_index)
    }
}

/// The outbox's table: its name, schema and the SQL using it.
#[derive(Debug)]
pub(crate) struct OutboxTable {
    pub(crate) schema: Schema,
    /// Adds a message and wakes the relays (on commit): $1 destination, $2 id, $3 key,
    /// $4 header names, $5 header values, $6 content type, $7 payload, $8 timestamp in
    /// milliseconds, $9 the channel to notify.
    pub(crate) insert: String,
    /// Locks and reads the next rows to publish, in order: every keyless row, and of each
    /// destination and key the first row only, so that a key's next message waits until
    /// its previous one is published, whichever relay has it. $1 the most rows.
    pub(crate) next: String,
    /// Deletes published rows: $1 their sequence numbers.
    pub(crate) delete: String,
    /// Counts the rows not yet published.
    pub(crate) count: String,
}

impl OutboxTable {
    /// The outbox table of this name, validated as [`TableName::new`] does.
    pub(crate) fn new(name: &str) -> Result<Self> {
        let name = TableName::new(name)?;
        let (index, qualified_index) = name.index("order");
        let t = &name.quoted;
        Ok(OutboxTable {
            insert: format!(
                "WITH added AS ( \
                     INSERT INTO {t} (destination, id, msg_key, header_names, header_values, \
                                      content_type, payload, timestamp_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq) \
                 SELECT pg_notify($9, '') FROM added"
            ),
            next: format!(
                "SELECT seq, destination, id, msg_key, header_names, header_values, \
                        content_type, payload, timestamp_ms \
                 FROM {t} AS row \
                 WHERE row.msg_key IS NULL OR NOT EXISTS ( \
                     SELECT 1 FROM {t} AS earlier \
                     WHERE earlier.destination = row.destination \
                       AND earlier.msg_key = row.msg_key AND earlier.seq < row.seq) \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            delete: format!("DELETE FROM {t} WHERE seq = ANY($1)"),
            count: format!("SELECT count(*) FROM {t}"),
            schema: Schema {
                statements: vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {t} ( \
                             seq bigserial PRIMARY KEY, \
                             destination text NOT NULL, \
                             id text NOT NULL, \
                             msg_key text, \
                             header_names text[] NOT NULL, \
                             header_values text[] NOT NULL, \
                             content_type text, \
                             payload bytea NOT NULL, \
                             timestamp_ms bigint NOT NULL, \
                             written_at timestamptz NOT NULL DEFAULT now())"
                    ),
                    format!(
                        "CREATE INDEX IF NOT EXISTS {index} ON {t} (destination, msg_key, seq)"
                    ),
                ],
                qualified_index,
                name,
            },
        })
    }
}

/// `part` as an identifier in double quotes. Validated names hold no quote; doubling them
/// keeps this right whatever it is given.
fn quote(part: &str) -> String {
    format!("\"{}\"", part.replace('"', "\"\""))
}

fn check_part(name: &str, kind: &str, part: &str, max: usize) -> Result<()> {
    let invalid = |reason: String| {
        Err(Error::Config(format!(
            "invalid PostgreSQL table name {name:?}: {reason}"
        )))
    };
    let Some(first) = part.chars().next() else {
        return invalid(format!("the {kind} name is empty"));
    };
    if first.is_ascii_digit() {
        return invalid(format!("the {kind} name starts with a digit"));
    }
    if let Some(bad) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return invalid(format!(
            "{bad:?} is not allowed: use ASCII letters, digits and `_` (optionally \
             `schema.table`)"
        ));
    }
    if part.len() > max {
        return invalid(format!(
            "the {kind} name has {} characters, more than {max}",
            part.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_quoted() {
        let table = Table::new("event_binder_handled").unwrap();
        assert_eq!(
            table.schema.regclass_names(),
            (
                "\"event_binder_handled\"",
                "\"event_binder_handled_forget_after\""
            )
        );
        let table = Table::new("app.Handled_2").unwrap();
        assert_eq!(
            table.schema.regclass_names(),
            (
                "\"app\".\"Handled_2\"",
                "\"app\".\"Handled_2_forget_after\""
            )
        );
        assert!(Table::new(&"t".repeat(MAX_TABLE_LEN)).is_ok());
        for bad in [
            "",
            ".t",
            "s.",
            "a.b.c",
            "1st",
            "t;drop table x",
            "t\"",
            "naïve",
            "with space",
            &"t".repeat(MAX_TABLE_LEN + 1),
        ] {
            assert!(
                matches!(Table::new(bad), Err(Error::Config(_))),
                "{bad:?} was accepted"
            );
        }
    }
}
