//! The server APIs of `reference/server-apis.txt`: what a backup or HA tool asks of a
//! PostgreSQL server over an ordinary connection (server facts, binary file reads,
//! checkpoints, backup start and stop), with every value sent as a bind parameter.
