//! TLS as libpq offers it, against a real server with `ssl = on` whose pg_hba accepts the
//! replication role only over TLS (`hostssl`): every sslmode, certificate chain and host
//! name checks, and SCRAM over TLS (where the server offers SCRAM-SHA-256-PLUS).

mod common;

use std::path::Path;

use common::{pg_configs, runtime};
use pgraft_testkit::{ReplicationServer, ReplicationServerOptions, TestCa};
use pgraft_walstream::{Config, Error, ReplicationClient};

struct Pki {
    ca_pem: String,
    other_ca_pem: String,
    server_pem: String,
    server_key: String,
}

fn pki() -> Pki {
    let ca = TestCa::new("pgraft test CA").expect("CA");
    let other = TestCa::new("another CA").expect("another CA");
    // The server's certificate names pg.test, localhost and 127.0.0.1.
    let server = ca.issue("pg.test", &["pg.test"]).expect("server certificate");
    Pki {
        ca_pem: ca.pem(),
        other_ca_pem: other.pem(),
        server_pem: server.cert_pem,
        server_key: server.key_pem,
    }
}

fn cfg(server: &ReplicationServer, extra: &str) -> Config {
    Config::from_conninfo(&format!("{} {extra}", server.replicator_conninfo())).expect("conninfo")
}

#[test]
fn sslmodes_and_certificate_checks() {
    let pki = pki();
    for pg in pg_configs() {
        let install = pgraft_testkit::PgInstall::from_pg_config(&pg).expect("pg_config");
        if !install.has_ssl() {
            // The PostgreSQL 16 of `make test-matrix` (a wheel) is built without OpenSSL.
            println!("pg{}: built without TLS: TLS is checked on the other versions", install.major);
            continue;
        }
        let opts = ReplicationServerOptions {
            conf: vec![
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
            ],
            hba_first: vec![
                "hostssl replication replicator 127.0.0.1/32 scram-sha-256".into(),
                "hostnossl replication replicator 127.0.0.1/32 reject".into(),
            ],
            files: vec![
                ("server.crt".into(), pki.server_pem.clone().into_bytes()),
                ("server.key".into(), pki.server_key.clone().into_bytes()),
            ],
        };
        let server = ReplicationServer::start_new("tls", &pg, &opts).expect("server with TLS");
        let major = server.install.major;
        let ca = server.root.join("ca.crt");
        std::fs::write(&ca, &pki.ca_pem).expect("write CA");
        let other = server.root.join("other.crt");
        std::fs::write(&other, &pki.other_ca_pem).expect("write other CA");
        let (ca, other) = (ca.display().to_string(), other.display().to_string());
        runtime().block_on(async {
            let ok = |extra: String| {
                let c = cfg(&server, &extra);
                async move {
                    let mut client = ReplicationClient::connect(&c)
                        .await
                        .unwrap_or_else(|e| panic!("pg{major}: {extra}: {e}"));
                    let tls = client.is_tls();
                    client.identify_system().await.unwrap_or_else(|e| panic!("pg{major}: {extra}: {e}"));
                    client.disconnect().await.expect("disconnect");
                    tls
                }
            };
            let fails = |extra: String| {
                let c = cfg(&server, &extra);
                async move {
                    match ReplicationClient::connect(&c).await {
                        Ok(_) => panic!("pg{major}: {extra} connected"),
                        Err(e) => e,
                    }
                }
            };
            // verify-full: the chain and the name (an IP address SAN) are checked.
            assert!(ok(format!("sslmode=verify-full sslrootcert={ca}")).await);
            // The name pg.test, reached through hostaddr, is on the certificate too.
            assert!(
                ok(format!("sslmode=verify-full sslrootcert={ca} host=pg.test hostaddr=127.0.0.1")).await
            );
            let e = fails(format!("sslmode=verify-full sslrootcert={ca} host=wrong.test hostaddr=127.0.0.1"))
                .await;
            assert!(matches!(e, Error::Tls(_)), "pg{major}: a wrong name: {e}");
            // verify-ca: the chain only.
            assert!(
                ok(format!("sslmode=verify-ca sslrootcert={ca} host=wrong.test hostaddr=127.0.0.1")).await
            );
            let e = fails(format!("sslmode=verify-ca sslrootcert={other}")).await;
            assert!(matches!(e, Error::Tls(_)), "pg{major}: another CA: {e}");
            let e = fails(format!(
                "sslmode=verify-full sslrootcert={}",
                Path::new(&ca).with_extension("missing").display()
            ))
            .await;
            assert!(matches!(e, Error::Tls(_)), "pg{major}: a missing root file: {e}");
            // require and prefer encrypt without checking; disable is refused by hostnossl
            // (SQLSTATE 28000), and allow falls back to TLS after that refusal.
            assert!(ok("sslmode=require".into()).await);
            assert!(ok("sslmode=prefer".into()).await);
            let e = fails("sslmode=disable".into()).await;
            assert_eq!(e.sqlstate(), Some("28000"), "pg{major}: {e}");
            assert!(ok("sslmode=allow".into()).await, "pg{major}: allow retried with TLS");
        });
    }
}

/// The Unix-domain socket: no TLS there, as in libpq, and the same login.
#[test]
fn unix_socket() {
    for pg in pg_configs() {
        let opts = ReplicationServerOptions {
            hba_first: vec!["local replication replicator scram-sha-256".into()],
            ..ReplicationServerOptions::default()
        };
        let server = ReplicationServer::start_new("unix", &pg, &opts).expect("server");
        let c = Config::from_conninfo(&format!(
            "host={} port={} user=replicator password={} sslmode=require",
            server.root.display(),
            server.port,
            pgraft_testkit::REPLICATOR_PASSWORD
        ))
        .expect("conninfo");
        runtime().block_on(async {
            let mut client = ReplicationClient::connect(&c).await.expect("connect over the socket");
            assert!(!client.is_tls());
            assert_eq!(client.identify_system().await.expect("IDENTIFY_SYSTEM").timeline, 1);
            client.disconnect().await.expect("disconnect");
        });
    }
}
