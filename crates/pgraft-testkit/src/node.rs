//! One member of a local cluster: its ports and directories.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything that names one member of a local cluster. Serialised as the JSON line that
/// `pgraftctl local up` prints, and kept in the cluster's state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    /// The Raft node id (1, 2, ...).
    pub node_id: u64,
    /// PostgreSQL's TCP port on 127.0.0.1.
    pub pg_port: u16,
    /// The Raft port the member advertises on 127.0.0.1; the partition proxy listens there.
    pub raft_port: u16,
    /// The address the member's Raft listener binds, and the source of its peer
    /// connections: `127.0.1.<node_id>`, same port as `raft_port`.
    pub listen_address: String,
    /// PGDATA.
    pub data_dir: PathBuf,
    /// `pgraft.data_dir`: the member's Raft log, state and snapshots.
    pub raft_data_dir: PathBuf,
    /// The server log.
    pub log_file: PathBuf,
    /// A libpq connection string on which the invoking account is a superuser.
    pub conninfo: String,
    /// The port of the member's HTTP endpoints on 127.0.0.1 (`pgraft.http_port`), when
    /// the cluster serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
}

impl Node {
    /// The conventional layout of member `node_id` under `node_dir`.
    pub fn new(node_id: u64, pg_port: u16, raft_port: u16, node_dir: PathBuf) -> Self {
        Self {
            node_id,
            pg_port,
            raft_port,
            listen_address: listen_ip(node_id).to_string(),
            data_dir: node_dir.join("pgdata"),
            raft_data_dir: node_dir.join("raft"),
            log_file: node_dir.join("postgres.log"),
            conninfo: format!("host=127.0.0.1 port={pg_port} user=postgres dbname=postgres"),
            http_port: None,
        }
    }

    /// The member's own directory (parent of PGDATA).
    pub fn node_dir(&self) -> PathBuf {
        self.data_dir.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| self.data_dir.clone())
    }

    /// Where the proxy forwards traffic for this member.
    pub fn listen_socket(&self) -> SocketAddrV4 {
        SocketAddrV4::new(listen_ip(self.node_id), self.raft_port)
    }

    /// The base URL of the member's HTTP endpoints, when it serves them.
    pub fn http_url(&self) -> Option<String> {
        self.http_port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// Where peers dial this member (the proxy).
    pub fn advertised_socket(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.raft_port)
    }

    /// The lines appended to the member's postgresql.conf.
    pub fn postgresql_conf(&self, cluster_id: &str) -> String {
        let http = match self.http_port {
            Some(p) => format!("pgraft.http_address = '127.0.0.1'\npgraft.http_port = {p}\n"),
            None => String::new(),
        };
        format!(
            "\n# written by pgraftctl local\n\
             listen_addresses = '127.0.0.1'\n\
             port = {pg_port}\n\
             unix_socket_directories = '{sock}'\n\
             shared_preload_libraries = 'pgraft'\n\
             max_connections = 100\n\
             shared_buffers = 32MB\n\
             fsync = on\n\
             log_line_prefix = '%m [%p] %q%a '\n\
             pgraft.cluster_id = '{cluster_id}'\n\
             pgraft.node_id = {node_id}\n\
             pgraft.address = '127.0.0.1'\n\
             pgraft.port = {raft_port}\n\
             pgraft.listen_address = '{listen}'\n\
             pgraft.data_dir = '{raft_dir}'\n",
            pg_port = self.pg_port,
            sock = self.node_dir().display(),
            node_id = self.node_id,
            raft_port = self.raft_port,
            listen = self.listen_address,
            raft_dir = self.raft_data_dir.display(),
        ) + &http
    }
}

/// Member `id` listens on 127.0.1.<id> (ids above 255 carry into the third octet), which
/// stays inside 127.0.0.0/8 and needs no configuration on Linux. Ids are capped at 65,279
/// so the address never leaves 127.0.0.0/8.
fn listen_ip(node_id: u64) -> Ipv4Addr {
    let n = node_id.min(65_279);
    Ipv4Addr::new(127, 0, 1 + (n / 256) as u8, (n % 256) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_loopback_and_distinct() {
        let a: Vec<Ipv4Addr> = (1..=600).map(listen_ip).collect();
        assert!(a.iter().all(|ip| ip.is_loopback()));
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn conninfo_names_loopback_and_the_port() {
        let n = Node::new(2, 5442, 7002, PathBuf::from("/tmp/c/node2"));
        assert_eq!(n.conninfo, "host=127.0.0.1 port=5442 user=postgres dbname=postgres");
        assert_eq!(n.data_dir, PathBuf::from("/tmp/c/node2/pgdata"));
        assert_eq!(n.node_dir(), PathBuf::from("/tmp/c/node2"));
        assert!(n.postgresql_conf("c1").contains("pgraft.node_id = 2\n"));
    }
}
