//! `[database]`: the connection pool.

use super::*;

/// The fewest connections a pool may have: a process that works holds one
/// for the Postgres LISTEN for as long as it runs, and a claim parked on a
/// connection while a worker shuts down must leave one for the in-flight
/// sends it waits for.
pub(super) const MIN_CONNECTIONS: u32 = 3;

/// The most: past a thousand, a single process only crowds the server.
pub(super) const MAX_CONNECTIONS: u32 = 1000;

/// Checks `[database]`.
pub(super) fn check(d: RawDatabase, cx: &Cx) -> Result<DatabaseConfig, ConfigError> {
    let max_connections = d
        .max_connections
        .map(|n| count_in(n, MIN_CONNECTIONS, MAX_CONNECTIONS))
        .transpose()
        .map_err(|e| cx.err("database.max_connections", e))?;
    Ok(DatabaseConfig { max_connections })
}
