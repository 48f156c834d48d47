//! The store's table: its validated name and the statements run on it.

use event_binder_core::{Error, Result};

/// The longest table name: PostgreSQL keeps 63 bytes of a name, and the index adds
/// `_forget_after` (13) to it.
pub(crate) const MAX_TABLE_LEN: usize = 50;
/// The longest schema name PostgreSQL keeps.
const MAX_SCHEMA_LEN: usize = 63;
/// Rows the purge deletes per statement, so that no statement holds many locks for long.
pub(crate) const PURGE_BATCH: i64 = 10_000;

/// A validated table name, `table` or `schema.table`, and the SQL using it.
#[derive(Debug)]
pub(crate) struct Table {
    /// The name as given.
    pub(crate) name: String,
    /// The table, quoted (and schema-qualified if given): for SQL.
    quoted: String,
    /// The index on `forget_after`, quoted and unqualified: created in the table's schema.
    index: String,
    /// The index, quoted and qualified as the table is: for `to_regclass`.
    qualified_index: String,
    /// `begin`: claims the id, returning a row only when acquired.
    /// $1 scope, $2 id, $3 holder, $4 lease, $5 retention.
    pub(crate) claim: String,
    /// `begin`, when not acquired: whether the id is handled, or held and for how long.
    /// $1 scope, $2 id.
    pub(crate) look: String,
    /// `complete`: $1 scope, $2 id, $3 holder, $4 retention.
    pub(crate) complete: String,
    /// `abandon`: $1 scope, $2 id, $3 holder.
    pub(crate) abandon: String,
    /// Deletes up to [`PURGE_BATCH`] rows past `forget_after`: $1 the batch size.
    pub(crate) purge: String,
}

impl Table {
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
        let quoted = format!("{qualifier}{}", quote(table));
        let index = quote(&format!("{table}_forget_after"));
        let qualified_index = format!("{qualifier}{index}");
        let t = &quoted;
        Ok(Table {
            name: name.to_owned(),
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
            quoted,
            index,
            qualified_index,
        })
    }

    /// The `CREATE TABLE` and `CREATE INDEX` statements, each idempotent.
    pub(crate) fn schema(&self) -> [String; 2] {
        let (t, index) = (&self.quoted, &self.index);
        [
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
        ]
    }

    /// Whether the table and its index exist: $1 the table, $2 the index.
    pub(crate) const EXISTS: &'static str =
        "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL";

    /// The table and its index as [`EXISTS`](Self::EXISTS) takes them.
    pub(crate) fn regclass_names(&self) -> (&str, &str) {
        (&self.quoted, &self.qualified_index)
    }

    /// Serialises the creation of this table among instances: `CREATE TABLE IF NOT EXISTS`
    /// run by two at once can fail on PostgreSQL's catalog. $1 the table name.
    pub(crate) const LOCK: &'static str = "SELECT pg_advisory_xact_lock(1162756353, hashtext($1))";
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
        assert_eq!(table.quoted, "\"event_binder_handled\"");
        assert_eq!(
            table.qualified_index,
            "\"event_binder_handled_forget_after\""
        );
        let table = Table::new("app.Handled_2").unwrap();
        assert_eq!(table.quoted, "\"app\".\"Handled_2\"");
        assert_eq!(table.qualified_index, "\"app\".\"Handled_2_forget_after\"");
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
